"""shared/keys.py declares every Redis name llmspool's processes write, arq's included."""

import arq.constants

from llmspool.shared import keys


def test_arq_keys_are_the_ones_arq_writes() -> None:
    job = keys.batch_job_id("validate_batch", "batch_1")
    assert keys.arq_job(job) == arq.constants.job_key_prefix + job
    assert keys.arq_in_progress(job) == arq.constants.in_progress_key_prefix + job
    assert keys.arq_retry(job) == arq.constants.retry_key_prefix + job
    assert keys.arq_result(job) == arq.constants.result_key_prefix + job
    assert arq.constants.abort_jobs_ss == keys.ARQ_ABORT
    suffix = arq.constants.health_check_key_suffix
    assert keys.BATCH_JOBS_QUEUE + suffix == keys.BATCH_JOBS_HEALTH_CHECK


def test_a_models_keys_share_its_hash_tag() -> None:
    names = [*keys.model_streams("m"), keys.dead_stream("m"), keys.control("m")]
    assert all("{m}" in name for name in names)
