# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""``python3 -m outcore ...``: the outcore command (see outcore.cli)."""
import sys

from .cli import main

sys.exit(main())
