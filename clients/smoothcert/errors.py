"""The one error of the statistics: a number that cannot be trusted."""


class NumericalError(ArithmeticError):
    """A bound or radius that did not come out as a trustworthy number (NaN, out of range,
    no bracket for a root): no certificate may be built on it."""
