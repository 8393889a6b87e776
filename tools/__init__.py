"""Developer tools in Python: the demo and what it shares with the tests."""
