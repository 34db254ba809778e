"""Logging set up the same way in every llmspool process."""

from __future__ import annotations

import logging


def configure(level: str, process: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {process}[%(process)d] %(name)s: %(message)s",
    )
