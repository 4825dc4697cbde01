"""Runs the test suite and prints {"passed": P, "total": T} as one JSON line."""

import json
import sys
import unittest

suite = unittest.defaultTestLoader.discover("tests")
result = unittest.TextTestRunner(stream=open("/dev/null", "w"), verbosity=0).run(suite)
total = result.testsRun
failed = len(result.failures) + len(result.errors)
print(json.dumps({"passed": total - failed, "total": total}))
sys.exit(0)
