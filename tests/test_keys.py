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
    names += [keys.waiting(keys.requests_stream("m")), keys.turns(keys.batch_stream("m"))]
    names += [keys.tenant_queue(keys.requests_stream("m"), "k")]
    names += [keys.shares(keys.batch_stream("m")), keys.doorbell(keys.batch_stream("m"))]
    assert all("{m}" in name for name in names)


def test_arq_job_ids_start_with_the_prefix() -> None:
    """So the ACL's ``arq:*:llmspool:*`` patterns cover every key arq writes for llmspool."""
    job_ids = [keys.batch_job_id("validate_batch", "batch_x"), f"{keys.BATCH_SWEEP_JOB}:1"]
    for job_id in job_ids:
        assert job_id.startswith(f"{keys.PREFIX}:")
        for name in (keys.arq_job, keys.arq_in_progress, keys.arq_retry, keys.arq_result):
            assert name(job_id).split(":", 2)[2].startswith(f"{keys.PREFIX}:")
    assert keys.BATCH_JOBS_HEALTH_CHECK.startswith(f"{keys.PREFIX}:")
