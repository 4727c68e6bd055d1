"""negalign: LLM post-training that learns from negative signal.

Public pieces: ``negalign.losses`` (pure objectives), ``negalign.logprobs`` (chunked log-probs),
``negalign.trainers`` (TRL subclasses), ``negalign.evaluation``, ``negalign.generation``, ``negalign.rewards``,
``negalign.models`` (the offline model kit), the ``negalign`` CLI.
"""

__version__ = "0.1.0"
