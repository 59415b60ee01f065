"""RecBole-style entry point: ``python run_recbole_letter.py --model=SASRec,TIGER --dataset=ml-100k``."""
import sys

from recbole_letter.cli import main

if __name__ == "__main__":
    sys.exit(main())
