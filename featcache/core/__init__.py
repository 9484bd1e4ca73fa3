"""The ground layer, below every other: one-line errors, atomic writes and pickle-free loads, the writer lock,
Ctrl-C held back to safe points, the device and its precision, consoles and progress bars, torchrun ranks."""

from featcache.core.errors import BadFileError, FeatcacheError, OptionError
from featcache.core.interrupt import deferred_interrupt
from featcache.core.io import atomic_path, ensure_writable_dir, safe_torch_load, torch_save, write_json
from featcache.core.lock import WriterLock
from featcache.core.progress import progress_bar
from featcache.core.ranks import Distributed
from featcache.core.runtime import err_console, out_console, resolve_device

__all__ = [
    "BadFileError",
    "Distributed",
    "FeatcacheError",
    "OptionError",
    "WriterLock",
    "atomic_path",
    "deferred_interrupt",
    "ensure_writable_dir",
    "err_console",
    "out_console",
    "progress_bar",
    "resolve_device",
    "safe_torch_load",
    "torch_save",
    "write_json",
]
