"""Caffe weight fillers.

Each filler mirrors one ``type`` of Caffe's ``FillerParameter`` (see Caffe's
``include/caffe/filler.hpp``) with the same parameter names, defaults and
meaning.  A filler is a small immutable object; calling it with a blob shape
and a :class:`numpy.random.Generator` returns a fresh float32, C-contiguous,
writable array of exactly that shape::

    import numpy as np
    from symnet import fillers

    rng = np.random.default_rng(0)
    w = fillers.xavier()((64, 32, 3, 3), rng)
    b = fillers.constant(0.25)((64,), rng)
    f = fillers.get({"type": "gaussian", "std": 0.01})

Only numpy is used.  Random streams are numpy's, so values are *not* bitwise
identical to Caffe's (Caffe uses boost's Mersenne twister); distributions,
bounds and scales are.

Conventions taken from Caffe (where Caffe aborts with a CHECK, we raise
:class:`ValueError`):

* the blob must not be empty (``CHECK(blob->count())``);
* ``uniform`` needs ``min <= max``; ``gaussian`` needs ``std > 0``;
* ``sparse`` (mean number of non-zero inputs per output) is only supported
  by ``gaussian``; every other filler requires it to be ``-1``;
* ``fan_in = count / shape[0]`` and ``fan_out = count / shape[1]`` (or
  ``count`` for a 1-D blob), as in Caffe's N-D blob compatibility code;
* ``bilinear`` needs a 4-D blob with a square kernel and uses
  ``f = ceil(k / 2)``, ``c = (k - 1) / (2 f)``, which is what current Caffe
  does (the older ``(2f - 1 - f % 2) / (2f)`` form gives the same centre
  whenever ``k % 4 == 0`` or ``k % 4 == 1``, but an off-centre kernel otherwise).

The process-wide stream
-----------------------
Caffe draws every weight filler from one process-wide generator that
``Caffe::set_random_seed`` seeds, so two nets built one after the other get
different weights and the same seed gives the same weights.  :func:`rng` is
that generator here (nets draw their fillers from it) and
:func:`set_random_seed` reseeds it.  Unlike Caffe, which seeds from the clock
unless told, it is seeded with 0 when this module is imported, so a run is
reproducible without any call.
"""

import enum
import math
import numbers

import numpy as np

__all__ = [
    "Filler",
    "ConstantFiller",
    "UniformFiller",
    "GaussianFiller",
    "PositiveUnitballFiller",
    "XavierFiller",
    "MSRAFiller",
    "BilinearFiller",
    "VarianceNorm",
    "constant",
    "uniform",
    "gaussian",
    "positive_unitball",
    "xavier",
    "msra",
    "bilinear",
    "from_param",
    "get",
    "FILLER_TYPES",
    "FILLER_PARAMETER_FIELDS",
    "rng",
    "set_random_seed",
]

#: Field names of Caffe's ``FillerParameter`` message, with Caffe's defaults.
FILLER_PARAMETER_FIELDS = {
    "type": "constant",
    "value": 0.0,
    "min": 0.0,
    "max": 1.0,
    "mean": 0.0,
    "std": 1.0,
    "sparse": -1,
    "variance_norm": "FAN_IN",
}


class VarianceNorm(enum.IntEnum):
    """Caffe's ``FillerParameter.VarianceNorm`` enum (same numeric values)."""

    FAN_IN = 0
    FAN_OUT = 1
    AVERAGE = 2


# --------------------------------------------------------------------------
# argument checking helpers
# --------------------------------------------------------------------------


def _real(filler, name, value):
    """Return ``value`` as a finite Python float or raise ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{filler} filler: parameter {name!r} must be a real number, "
            f"got {value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"{filler} filler: parameter {name!r} must be finite, got {value!r}"
        )
    return value


def _integer(filler, name, value):
    """Return ``value`` as a Python int (integral floats accepted)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"{filler} filler: parameter {name!r} must be an integer, got {value!r}"
        )
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    raise ValueError(
        f"{filler} filler: parameter {name!r} must be an integer, "
        f"got {value!r} of type {type(value).__name__}"
    )


def _variance_norm(filler, value):
    """Parse a ``variance_norm`` given as enum, int 0/1/2 or (any-case) name."""
    if isinstance(value, VarianceNorm):
        return value
    if isinstance(value, str):
        key = value.strip().upper()
        if key in VarianceNorm.__members__:
            return VarianceNorm[key]
    elif isinstance(value, numbers.Integral) and not isinstance(
        value, (bool, np.bool_)
    ):
        if int(value) in {m.value for m in VarianceNorm}:
            return VarianceNorm(int(value))
    expected = ", ".join(f"{m.name!r} ({m.value})" for m in VarianceNorm)
    raise ValueError(
        f"{filler} filler: unknown variance_norm {value!r}; "
        f"expected one of {expected} (names are case-insensitive)"
    )


def _check_sparse_unsupported(filler, sparse):
    sparse = _integer(filler, "sparse", sparse)
    if sparse != -1:
        raise ValueError(
            f"{filler} filler: sparsity is not supported (got sparse={sparse}, "
            f"expected -1); only the 'gaussian' filler accepts sparse >= 0"
        )


def _shape(filler, shape):
    """Normalise ``shape`` to a tuple of non-negative Python ints."""
    if isinstance(shape, (numbers.Integral, np.integer)) and not isinstance(
        shape, (bool, np.bool_)
    ):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(
            f"{filler} filler: shape must be a tuple of ints, got {shape!r}"
        ) from None
    out = []
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(
            d, (numbers.Integral, np.integer)
        ):
            raise ValueError(
                f"{filler} filler: shape must be a tuple of ints, got {shape!r}"
            )
        if d < 0:
            raise ValueError(
                f"{filler} filler: shape dimensions must be >= 0, got {shape!r}"
            )
        out.append(int(d))
    out = tuple(out)
    if math.prod(out) == 0:
        raise ValueError(
            f"{filler} filler: cannot fill an empty blob of shape {out} "
            f"(Caffe requires a blob with count > 0)"
        )
    return out


def _check_rng(filler, rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{filler} filler: rng must be a numpy.random.Generator "
            f"(e.g. numpy.random.default_rng(seed)), got {type(rng).__name__}"
        )


def _uniform_fill(rng, shape, lo, hi):
    """float32 samples in the closed interval [lo, hi] (lo, hi float32)."""
    out = rng.random(shape, dtype=np.float32)
    out *= np.float32(hi - lo)
    out += np.float32(lo)
    # Rounding of (hi - lo) can overshoot by one ulp; Caffe's interval is
    # closed, so clamping keeps the exact contract.
    np.clip(out, lo, hi, out=out)
    return out


def _fans(filler, shape):
    if len(shape) < 1:
        raise ValueError(
            f"{filler} filler: needs a blob with at least 1 axis to compute "
            f"fan_in/fan_out, got shape {shape}"
        )
    count = math.prod(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _fan_n(variance_norm, fan_in, fan_out):
    if variance_norm == VarianceNorm.FAN_OUT:
        return float(fan_out)
    if variance_norm == VarianceNorm.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_in)


# --------------------------------------------------------------------------
# fillers
# --------------------------------------------------------------------------


class Filler:
    """Base class of all fillers.

    Subclasses set :attr:`type` (Caffe's type string), :attr:`_params` (the
    FillerParameter field names they use, in display order) and implement
    :meth:`_fill`.
    """

    #: Caffe ``FillerParameter.type`` string.
    type = None
    #: Whether the filler draws random numbers (needs an ``rng``).
    random = True
    _params = ()

    def __call__(self, shape, rng):
        """Return a new float32 C-contiguous array of ``shape``.

        ``rng`` must be a :class:`numpy.random.Generator`; deterministic
        fillers (``constant``, ``bilinear``) also accept ``None``.
        """
        shape = _shape(self.type, shape)
        if self.random or rng is not None:
            _check_rng(self.type, rng)
        out = self._fill(shape, rng)
        if (
            out.dtype != np.float32
            or out.shape != shape
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            out = np.array(out, dtype=np.float32, order="C").reshape(shape)
        return out

    def _fill(self, shape, rng):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def params(self):
        """The filler's parameters as a dict (Caffe field names)."""
        return {name: getattr(self, name) for name in self._params}

    def to_param(self):
        """A Caffe FillerParameter dict (``type`` plus this filler's fields)
        that :func:`get` turns back into an equal filler."""
        d = {"type": self.type}
        for name, value in self.params.items():
            d[name] = value.name if isinstance(value, VarianceNorm) else value
        return d

    def __repr__(self):
        args = []
        for name, value in self.params.items():
            if isinstance(value, VarianceNorm):
                value = value.name
            args.append(f"{name}={value!r}")
        return f"{self.type}({', '.join(args)})"

    def __eq__(self, other):
        if not isinstance(other, Filler):
            return NotImplemented
        return type(self) is type(other) and self.params == other.params

    def __hash__(self):
        return hash((type(self).__name__, tuple(self.params.items())))


class ConstantFiller(Filler):
    """Every element equals ``value`` (Caffe ``constant``, default 0)."""

    type = "constant"
    random = False
    _params = ("value",)

    def __init__(self, value=0.0):
        self.value = _real(self.type, "value", value)

    def _fill(self, shape, rng):
        return np.full(shape, self.value, dtype=np.float32)


class UniformFiller(Filler):
    """Samples from U[min, max] (Caffe ``uniform``; closed interval)."""

    type = "uniform"
    _params = ("min", "max")

    def __init__(self, min=0.0, max=1.0):  # noqa: A002 - Caffe's names
        lo = _real(self.type, "min", min)
        hi = _real(self.type, "max", max)
        if lo > hi:
            raise ValueError(
                f"uniform filler: min must be <= max, got min={lo!r} > max={hi!r}"
            )
        self.min = lo
        self.max = hi

    def _fill(self, shape, rng):
        return _uniform_fill(rng, shape, np.float32(self.min), np.float32(self.max))


class GaussianFiller(Filler):
    """Samples from N(mean, std^2) (Caffe ``gaussian``).

    With ``sparse >= 0`` each element is then kept with probability
    ``sparse / shape[0]`` (``shape[0]`` is the number of outputs) and zeroed
    otherwise, so every output has on average ``sparse`` non-zero inputs.
    ``sparse`` may not exceed ``shape[0]`` (the probability would exceed 1).
    """

    type = "gaussian"
    _params = ("mean", "std", "sparse")

    def __init__(self, mean=0.0, std=1.0, sparse=-1):
        self.mean = _real(self.type, "mean", mean)
        self.std = _real(self.type, "std", std)
        if not np.float32(self.std) > 0:
            raise ValueError(
                f"gaussian filler: std must be > 0 (Caffe requires a positive "
                f"sigma), got std={self.std!r}"
            )
        self.sparse = _integer(self.type, "sparse", sparse)
        if self.sparse < -1:
            raise ValueError(
                f"gaussian filler: sparse must be -1 (dense) or >= 0, "
                f"got sparse={self.sparse}"
            )

    def _fill(self, shape, rng):
        if self.sparse >= 0:
            if len(shape) < 1:
                raise ValueError(
                    f"gaussian filler: sparse initialisation needs a blob with "
                    f"at least 1 axis (shape[0] = number of outputs), got shape {shape}"
                )
            p = self.sparse / shape[0]
            if p > 1.0:
                raise ValueError(
                    f"gaussian filler: sparse={self.sparse} exceeds the number "
                    f"of outputs shape[0]={shape[0]} (non-zero probability "
                    f"sparse/shape[0] must be <= 1)"
                )
        out = rng.standard_normal(shape, dtype=np.float32)
        out *= np.float32(self.std)
        out += np.float32(self.mean)
        if self.sparse >= 0:
            drop = rng.random(shape, dtype=np.float32) >= np.float32(p)
            out[drop] = 0.0
        return out


class PositiveUnitballFiller(Filler):
    """U[0, 1] samples, then each of the ``shape[0]`` rows (all trailing axes
    flattened) divided by its sum, so every row is non-negative and sums to 1
    (Caffe ``positive_unitball``)."""

    type = "positive_unitball"
    _params = ()

    def __init__(self):
        pass

    def _fill(self, shape, rng):
        if len(shape) < 1:
            raise ValueError(
                f"positive_unitball filler: needs a blob with at least 1 axis "
                f"(rows are indexed by shape[0]), got shape {shape}"
            )
        out = rng.random(shape, dtype=np.float32)
        # 1 - U[0, 1) lies in (0, 1]: same distribution, no all-zero rows.
        np.subtract(np.float32(1.0), out, out=out)
        rows = out.reshape(shape[0], -1)
        sums = rows.sum(axis=1, dtype=np.float64, keepdims=True)
        rows /= sums.astype(np.float32)
        return out


class _FanFiller(Filler):
    _params = ("variance_norm",)

    def __init__(self, variance_norm="FAN_IN"):
        self.variance_norm = _variance_norm(self.type, variance_norm)

    def n_for(self, shape):
        """The ``n`` used for ``shape`` (fan_in, fan_out or their average)."""
        shape = _shape(self.type, shape)
        return _fan_n(self.variance_norm, *_fans(self.type, shape))


class XavierFiller(_FanFiller):
    """U[-a, a] with ``a = sqrt(3 / n)``, n = fan_in, fan_out or their average
    according to ``variance_norm`` (Caffe ``xavier``, Glorot & Bengio 2010)."""

    type = "xavier"

    def scale_for(self, shape):
        """The bound ``a`` used for ``shape``."""
        return math.sqrt(3.0 / self.n_for(shape))

    def _fill(self, shape, rng):
        n = _fan_n(self.variance_norm, *_fans(self.type, shape))
        a = np.float32(math.sqrt(3.0 / n))
        return _uniform_fill(rng, shape, -a, a)


class MSRAFiller(_FanFiller):
    """N(0, 2 / n), n = fan_in, fan_out or their average according to
    ``variance_norm`` (Caffe ``msra``, He et al. 2015)."""

    type = "msra"

    def std_for(self, shape):
        """The standard deviation used for ``shape``."""
        return math.sqrt(2.0 / self.n_for(shape))

    def _fill(self, shape, rng):
        std = math.sqrt(2.0 / _fan_n(self.variance_norm, *_fans(self.type, shape)))
        out = rng.standard_normal(shape, dtype=np.float32)
        out *= np.float32(std)
        return out


class BilinearFiller(Filler):
    """Bilinear-interpolation kernel for a ``Deconvolution`` layer
    (Caffe ``bilinear``).

    Needs a 4-D blob ``(out, in, k, k)``.  With ``f = ceil(k / 2)`` and
    ``c = (k - 1) / (2 f)`` the value at ``(y, x)`` is
    ``(1 - |x / f - c|) * (1 - |y / f - c|)``, identical for every
    ``(out, in)`` pair.  For upsampling by an integer factor ``s`` Caffe
    recommends ``kernel_size = 2 s - s % 2``, ``stride = s``,
    ``pad = ceil((s - 1) / 2)``, ``group = num_output = channels`` and
    ``lr_mult: 0``.
    """

    type = "bilinear"
    random = False
    _params = ()

    def __init__(self):
        pass

    @staticmethod
    def kernel(k):
        """The 2-D ``(k, k)`` float64 bilinear kernel."""
        f = math.ceil(k / 2.0)
        c = (k - 1) / (2.0 * f)
        w = 1.0 - np.abs(np.arange(k, dtype=np.float64) / f - c)
        return np.outer(w, w)

    def _fill(self, shape, rng):
        if len(shape) != 4:
            raise ValueError(
                f"bilinear filler: needs a 4-D blob (num_output, channels, "
                f"kernel_h, kernel_w), got {len(shape)}-D shape {shape}"
            )
        kh, kw = shape[2], shape[3]
        if kh != kw:
            raise ValueError(
                f"bilinear filler: kernel must be square (kernel_h == kernel_w), "
                f"got kernel_h={kh}, kernel_w={kw} in shape {shape}"
            )
        out = np.empty(shape, dtype=np.float32)
        out[...] = self.kernel(kw).astype(np.float32)
        return out


# --------------------------------------------------------------------------
# public lower-case names (as written in prototxt) and factories
# --------------------------------------------------------------------------

constant = ConstantFiller
uniform = UniformFiller
gaussian = GaussianFiller
positive_unitball = PositiveUnitballFiller
xavier = XavierFiller
msra = MSRAFiller
bilinear = BilinearFiller

#: Caffe type string -> filler class, in Caffe's GetFiller order.
FILLER_TYPES = {
    cls.type: cls
    for cls in (
        ConstantFiller,
        GaussianFiller,
        PositiveUnitballFiller,
        UniformFiller,
        XavierFiller,
        MSRAFiller,
        BilinearFiller,
    )
}


def from_param(type="constant", **kwargs):  # noqa: A002 - Caffe's name
    """Build a filler from FillerParameter fields (Caffe's ``GetFiller``).

    ``type`` defaults to ``"constant"`` as in Caffe and is matched exactly
    (Caffe's type strings are lower case).  FillerParameter fields that the
    chosen filler does not use are ignored, as Caffe ignores them -- except
    ``sparse``, which Caffe rejects (unless it is -1) for every filler but
    ``gaussian``.  Names that are not FillerParameter fields raise
    :class:`ValueError`.
    """
    if not isinstance(type, str) or type not in FILLER_TYPES:
        known = ", ".join(repr(t) for t in FILLER_TYPES)
        raise ValueError(f"unknown filler type {type!r}; known types: {known}")
    unknown = sorted(k for k in kwargs if k not in FILLER_PARAMETER_FIELDS)
    if unknown:
        fields = ", ".join(repr(f) for f in FILLER_PARAMETER_FIELDS)
        raise ValueError(
            f"{type} filler: unknown FillerParameter field(s) "
            f"{', '.join(repr(k) for k in unknown)}; valid fields: {fields}"
        )
    cls = FILLER_TYPES[type]
    used = {k: v for k, v in kwargs.items() if k in cls._params}
    if "sparse" in kwargs and "sparse" not in cls._params:
        _check_sparse_unsupported(type, kwargs["sparse"])
    return cls(**used)


def get(spec):
    """Coerce ``spec`` to a :class:`Filler`.

    Accepts a :class:`Filler` (returned unchanged), a FillerParameter-like
    mapping such as ``{"type": "xavier", "variance_norm": "AVERAGE"}``
    (missing ``type`` means ``"constant"``), a bare type string such as
    ``"msra"``, or ``None`` (an unset FillerParameter, i.e. ``constant(0)``).
    """
    if isinstance(spec, Filler):
        return spec
    if spec is None:
        return from_param()
    if isinstance(spec, str):
        return from_param(spec)
    if hasattr(spec, "keys") and hasattr(spec, "__getitem__"):
        kwargs = {str(k): spec[k] for k in spec.keys()}
        return from_param(**kwargs)
    raise ValueError(
        f"cannot build a filler from {spec!r} of type {type(spec).__name__}; "
        f"expected a Filler, a FillerParameter dict, a type string or None"
    )


# ---------------------------------------------------------------- process-wide stream

_STREAM = [np.random.default_rng(0)]


def rng():
    """The process-wide :class:`numpy.random.Generator` weight fillers draw from.

    Seeded with 0 when :mod:`symnet.fillers` is imported (runs are reproducible
    unless reseeded); :func:`set_random_seed` replaces it.  Every draw advances
    it, so nets built one after the other get different weights."""
    return _STREAM[0]


def set_random_seed(seed):
    """Reseed every random stream symnet draws from, as ``Caffe::set_random_seed``:
    the weight fillers' (:func:`rng`), the functional front end's
    (:func:`symnet.functions.set_seed`) and the data layers' base seed
    (:func:`symnet.data.set_seed`, for sources made after this call).
    ``seed`` is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"set_random_seed: seed must be an integer, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"set_random_seed: seed must be >= 0, got {seed}")
    _STREAM[0] = np.random.default_rng(seed)
    # imported here: both modules import this one
    from . import data, functions
    functions.set_seed(seed)
    data.set_seed(seed)
