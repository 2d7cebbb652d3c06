"""Give memory back after each request: Python's garbage, then the C allocator's free pages."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading


def _libc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _libc_trim()


def release() -> None:
    """Decoded images and activations of a request are gone once it returns; this hands their pages back."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)


_pending = threading.Lock()


def release_soon() -> None:
    """``release`` on a background thread, so the request that asks for it is answered at once.

    A full collection takes a second or more in a process holding torch and gradio; a button pressed
    in that second must not find its previous event still running. One release at a time is enough.
    """
    if _pending.acquire(blocking=False):

        def run() -> None:
            try:
                release()
            finally:
                _pending.release()

        threading.Thread(target=run, name="capnet-release", daemon=True).start()
