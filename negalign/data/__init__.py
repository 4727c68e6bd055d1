"""Data loaders. Each loader is a dataclass: its fields are the recipe's ``data`` keys, its ``load()`` the data.

``LOADERS`` maps the recipe's ``data.name`` to the loader class. Every loader reads a local file or folder by path
(``../shared/data/...`` here) or a Hugging Face Hub id, validates columns and emptiness with a clear error, and
returns ``datasets.Dataset`` objects with the column names the matching trainer expects.
"""

from negalign.data.core import DataError, QAData, format_prompt, read_records

LOADERS = {
    "qa": QAData,
}

__all__ = ["LOADERS", "DataError", "QAData", "format_prompt", "read_records"]
