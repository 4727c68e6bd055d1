"""Data loaders. Each loader is a dataclass: its fields are the recipe's ``data`` keys, its ``load()`` the data.

``LOADERS`` maps the recipe's ``data.name`` to the loader class. Every loader reads a local file or folder by path
(``../shared/data/...`` here) or a Hugging Face Hub id, validates columns and emptiness with a clear error, and
returns ``datasets.Dataset`` objects with the column names the matching trainer expects.
"""

from negalign.data.core import DataError, QAData, format_prompt, read_records
from negalign.data.preference import NegativesData, PreferenceData
from negalign.data.math import ArithmeticData, GSM8KData, MathData
from negalign.data.tofu import TofuData
from negalign.data.steps import StepArithData, chat_prompt

LOADERS = {
    "qa": QAData,
    "negatives": NegativesData,
    "preference": PreferenceData,
    "gsm8k": GSM8KData,
    "math": MathData,
    "arith": ArithmeticData,
    "tofu": TofuData,
    "steparith": StepArithData,
}

__all__ = ["LOADERS", "DataError", "QAData", "chat_prompt", "format_prompt", "read_records"]
