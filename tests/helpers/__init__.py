"""Helpers shared by the test modules (no tests here): importable as ``helpers.*`` because
tests/conftest.py puts tests/ on sys.path."""
