"""Load-testing harness for the chat gateway: a fast fake upstream, a load generator, a matrix runner.

See ``loadtests/README.md``. Nothing here is imported by the application.
"""
