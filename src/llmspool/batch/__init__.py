"""Batch jobs: the OpenAI Batch API on the model streams.

``models`` holds the OpenAI objects (file, batch), ``store`` their state in Redis and the
scripts that record each line's result exactly once, ``lines`` parses and checks input files,
``results`` builds result and output lines, and ``steps`` the arq jobs that run a batch's
lifecycle (validate, fan out, finalize, sweep).
"""
