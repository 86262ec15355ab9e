"""pytest configuration shared by every test module."""
from __future__ import annotations

import os
import sys

# The tests import the package from the source tree, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
