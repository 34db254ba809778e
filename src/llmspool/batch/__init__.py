"""Batch jobs: the OpenAI Batch API on the model streams.

``models`` holds the OpenAI objects (file, batch), ``store`` their state in Redis and the
scripts that record each line's result exactly once, ``lines`` parses and checks input files,
``results`` builds result and output lines, ``steps`` the arq jobs that run a batch's
lifecycle (validate, fan out, finalize, sweep), and ``queue`` their names and how to queue one
(all that the API and the workers need of arq).
"""
