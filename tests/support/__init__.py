"""What the tests share: servers and backends to start, a harness around the app, helpers
that wait for a condition. Test modules import only from here, never from each other or
from a conftest.py (the conftests hold the fixtures, built from this code)."""
