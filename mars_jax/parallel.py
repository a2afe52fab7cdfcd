"""Device meshes and shardings: data parallelism and fully-sharded parameters with GSPMD.

The runner builds one :class:`Placement` from the ``[parallel]`` config section and hands
it to the round loop, which uses it at its ``jit`` boundaries only: pair batches are padded
to a multiple of the batch-axis size with weight-0 rows and split along their leading axis
over every device (axes ``data`` x ``fsdp``), parameters and optimizer state are replicated
or, with ``fsdp > 1``, split along their largest divisible dimension over the ``fsdp``
axis. The kernels (train step, scoring pass, curvature estimators) know nothing about the
mesh: XLA's GSPMD partitioner propagates the input shardings through them and inserts the
collectives (the gradient all-reduce, all-gathers of fsdp-sharded weights).

Arrays are built with :func:`jax.make_array_from_callback`, so on several hosts each
process materialises only the rows of its own devices (:func:`host_local_batch` takes
rows a host loaded itself). Results do not depend on the number of devices beyond the
order of floating-point reductions.

Example (8 simulated CPU devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=8``):
  >>> placement = Placement(build_mesh(MeshSettings(enabled=True, fsdp=2)))  # doctest: +SKIP
  >>> placement.batch_multiple  # doctest: +SKIP
  8
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mars_jax.errors import MarsError
from mars_jax.settings import setting
from mars_jax.types import PairBatch, PyTree

__all__ = [
    "AXES",
    "MeshSettings",
    "Placement",
    "build_mesh",
    "host_local_batch",
    "host_rows",
    "initialize_distributed",
    "pad_rows",
    "param_spec",
    "placement_for",
]

AXES = ("data", "fsdp")


@dataclass(frozen=True)
class MeshSettings:
    """The ``[parallel]`` config section.

    Attributes:
      enabled: shard over a device mesh (False: the plain single-device path).
      data: size of the ``data`` axis; -1 takes every device left after ``fsdp``.
      fsdp: size of the ``fsdp`` axis (parameters split over it; 1 = replicated).
      distributed: call :func:`jax.distributed.initialize` first (several hosts; the
        coordinator, process count and id come from the environment: TPU, SLURM, ...).
    """

    enabled: bool = setting(False, "shard training, scoring and curvature over a device mesh")
    data: int = setting(-1, "devices on the data axis (-1: all devices left after fsdp)", min=-1)
    fsdp: int = setting(1, "devices on the fsdp axis; parameters are split over it", min=1)
    distributed: bool = setting(
        False, "call jax.distributed.initialize() first (multi-host: TPU slice, SLURM)"
    )


_initialized = False


def initialize_distributed(settings: MeshSettings) -> None:
    """Join the multi-host job once when ``settings.distributed`` (before any JAX work).

    Raises:
      MarsError: if the coordinator, process count or process id cannot be found.
    """
    global _initialized
    if settings.distributed and not _initialized:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise MarsError(
                f"parallel.distributed = true, but jax.distributed.initialize() failed: "
                f"{first_line}"
            ) from None
        _initialized = True


def build_mesh(settings: MeshSettings, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 2-D ``data x fsdp`` mesh over ``devices`` (default: all devices of all hosts).

    Both axes are ``AxisType.Auto``, so shardings propagate through ``jit`` (GSPMD).

    Raises:
      MarsError: if ``data * fsdp`` is not the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    count = len(devices)
    if settings.fsdp < 1 or count % settings.fsdp:
        raise MarsError(
            f"parallel.fsdp = {settings.fsdp} does not divide the {count} devices available"
        )
    data = count // settings.fsdp if settings.data == -1 else settings.data
    if data < 1 or data * settings.fsdp != count:
        raise MarsError(
            f"parallel.data * parallel.fsdp = {data} * {settings.fsdp} must equal the "
            f"{count} devices available (parallel.data = -1 fills the rest)"
        )
    return jax.make_mesh(
        (data, settings.fsdp), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices
    )


def placement_for(settings: MeshSettings) -> Placement | None:
    """The run's placement, or None (the unsharded path) when sharding is off.

    Also None on a single device, so ``enabled`` is a no-op there (identical results).
    """
    if not settings.enabled:
        return None
    initialize_distributed(settings)
    mesh = build_mesh(settings)
    return Placement(mesh) if mesh.size > 1 else None


def param_spec(shape: Sequence[int], fsdp: int) -> PartitionSpec:
    """Split the largest dimension divisible by ``fsdp`` over ``fsdp`` (the last on ties).

    Replicated when ``fsdp == 1`` or no dimension divides (biases, scalars).
    """
    if fsdp == 1:
        return PartitionSpec()
    candidates = [(size, axis) for axis, size in enumerate(shape) if size % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    return PartitionSpec(*([None] * axis), "fsdp")


def pad_rows(array: np.ndarray, multiple: int, *, axis: int = 0) -> np.ndarray:
    """``array`` with zeros appended along ``axis`` up to a multiple of ``multiple``."""
    size = array.shape[axis]
    padding = -size % multiple
    if not padding:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, padding)
    return np.pad(array, widths)


def host_rows(num_rows: int, mesh: Mesh) -> slice:
    """The rows of a ``num_rows``-row batch that this process's devices hold.

    ``num_rows`` must be a multiple of the mesh size (pad first); a host loads only these
    rows and passes them to :func:`host_local_batch`.
    """
    sharding = NamedSharding(mesh, PartitionSpec(AXES))
    indices = sharding.addressable_devices_indices_map((num_rows,)).values()
    starts = [index[0].start or 0 for index in indices]
    stops = [num_rows if index[0].stop is None else index[0].stop for index in indices]
    return slice(min(starts), max(stops))


def host_local_batch(local: PyTree, mesh: Mesh, num_rows: int) -> PyTree:
    """A global batch of ``num_rows`` rows from each host's own rows (see :func:`host_rows`).

    Every leaf of ``local`` holds this process's rows on its leading axis; the result is
    sharded along the leading axis over all devices.
    """
    sharding = NamedSharding(mesh, PartitionSpec(AXES))
    return jax.tree.map(
        lambda leaf: jax.make_array_from_process_local_data(
            sharding, np.asarray(leaf), (num_rows, *np.shape(leaf)[1:])
        ),
        local,
    )


@dataclass(frozen=True)
class Placement:
    """Shardings of a run on one mesh (hashable: compiled functions may be cached on it)."""

    mesh: Mesh
    _unpads: dict[tuple[int, int], Callable] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def batch_multiple(self) -> int:
        """Batches are padded to a multiple of this (the number of devices)."""
        return self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        """A full copy on every device."""
        return NamedSharding(self.mesh, PartitionSpec())

    def rows_sharding(self, ndim: int, axis: int = 0) -> NamedSharding:
        """Split axis ``axis`` of an ``ndim``-dimensional array over every device."""
        return NamedSharding(self.mesh, PartitionSpec(*([None] * axis), AXES))

    def param_shardings(self, tree: PyTree) -> PyTree:
        """Per-leaf shardings of parameters, optimizer state or vectors like them."""
        fsdp = self.mesh.shape["fsdp"]
        return jax.tree.map(
            lambda leaf: NamedSharding(self.mesh, param_spec(np.shape(leaf), fsdp)), tree
        )

    def put_params(self, tree: PyTree) -> PyTree:
        """``tree`` (parameters, a train state) laid out by :meth:`param_shardings`."""
        return jax.device_put(tree, self.param_shardings(tree))

    def constrain_params(self, tree: PyTree) -> PyTree:
        """Inside ``jit``: pin a parameter-shaped pytree (a probe, a Lanczos vector)."""
        return jax.lax.with_sharding_constraint(tree, self.param_shardings(tree))

    def put(self, array: np.ndarray | jax.Array, sharding: NamedSharding) -> jax.Array:
        """A global array from a host copy of all of it (each host transfers its shards)."""
        host = np.asarray(array)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def put_replicated(self, tree: PyTree) -> PyTree:
        """Every leaf of ``tree`` copied to every device."""
        return jax.tree.map(lambda leaf: self.put(leaf, self.replicated), tree)

    def put_rows(self, tree: PyTree) -> PyTree:
        """Leaves padded along axis 0 to :attr:`batch_multiple` (repeating row 0), sharded."""

        def put(leaf: jax.Array) -> jax.Array:
            host = np.asarray(leaf)
            padding = -host.shape[0] % self.batch_multiple
            rows = np.concatenate([np.arange(host.shape[0]), np.zeros(padding, np.int64)])
            return self.put(host[rows], self.rows_sharding(host.ndim))

        return jax.tree.map(put, tree)

    def put_pairs(self, pairs: PairBatch) -> PairBatch:
        """Pairs padded with weight-0 rows to :attr:`batch_multiple`, sharded by rows."""
        chosen, rejected = self.put_rows((pairs.chosen, pairs.rejected))
        weight = pad_rows(np.asarray(pairs.weight), self.batch_multiple)
        return PairBatch(chosen, rejected, self.put(weight, self.rows_sharding(1)))

    def unpad(self, array: jax.Array, num_rows: int, *, axis: int = 0) -> jax.Array:
        """The first ``num_rows`` entries along ``axis``, replicated on every device."""
        if (num_rows, axis) not in self._unpads:
            self._unpads[num_rows, axis] = jax.jit(
                functools.partial(
                    jax.lax.slice_in_dim, start_index=0, limit_index=num_rows, axis=axis
                ),
                out_shardings=self.replicated,
            )
        return self._unpads[num_rows, axis](array)
