"""Scripts that print numbers, each run from the project root as `python -m benchmarks.NAME`.

benchmarks.harness holds what they share; docs/benchmarks.md says what each one measures.
"""
