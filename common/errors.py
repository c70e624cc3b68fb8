"""The errors the CLI turns into readable messages. Kept import-light so `vlmforge stats` starts fast."""


class ConfigError(ValueError):
    """A configuration problem, with a message naming the offending field."""


class InputError(ValueError):
    """The input path or format cannot be used."""


class JobError(RuntimeError):
    """The job cannot run as asked (e.g. the output holds a different run)."""


class AccountingError(RuntimeError):
    """Rows were lost or invented: input != kept + rejected. Always a bug."""
