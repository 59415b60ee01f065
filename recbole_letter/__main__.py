"""``python -m recbole_letter`` == ``run_recbole_letter.py``."""
import sys

from recbole_letter.cli import main

sys.exit(main())
