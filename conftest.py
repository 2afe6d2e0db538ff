"""pytest's root conftest: loads the suite's shared plugin (tests/whisper_tune_testing.py) for tests/ and
every backends/<name>/tests alike."""

pytest_plugins = ["whisper_tune_testing"]
