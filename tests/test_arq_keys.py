"""arq writes keys of its own: those shared/keys.py declares (and the ACL allows), no others."""

from __future__ import annotations

from arq import constants

from llmspool.shared import keys


def test_arq_keys_are_the_declared_ones() -> None:
    prefixes = (
        constants.job_key_prefix,
        constants.in_progress_key_prefix,
        constants.retry_key_prefix,
        constants.result_key_prefix,
    )
    assert prefixes == keys.ARQ_KEY_PREFIXES
    assert constants.abort_jobs_ss == keys.ARQ_ABORTS
    assert keys.batch_job_id("validate", "batch_x").startswith(f"{keys.PREFIX}:")
    assert keys.BATCH_SWEEP_JOB.startswith(f"{keys.PREFIX}:")
    assert keys.BATCH_JOBS_QUEUE.startswith(f"{keys.PREFIX}:")  # its health check key too
