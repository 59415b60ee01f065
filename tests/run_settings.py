"""RecBole settings shared by the tests that build generative models (TIGER, LCRec, STORE) directly.

One leave-one-out split with full-sort ranking, no history masking (``repeatable``, the package's
protocol), the three atomic-file columns the tiny datasets write, and quiet runs. Each test adds
its own sizes, metrics and model keys on top. A function, not a constant: RecBole's Config may
rewrite nested values (``eval_args``) in place, so every config gets its own copy.
"""


def leave_one_out_full_sort() -> dict:
    """Fresh settings for one Config (see the module docstring)."""
    return {
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "repeatable": True,
        "show_progress": False,
        "state": "ERROR",
    }
