"""Trainers: thin subclasses of TRL's trainers. Each module defines ``CONFIG_CLASS``, optional ``METHOD_DEFAULTS``,
and ``train(recipe) -> metrics``; ``negalign.config.METHODS`` maps method names to modules."""
