"""Writing safetensors files with the permissions an ordinary file would get.

``safetensors.numpy.save_file`` (0.8 and later) writes through a temporary file that is
created 0600 whatever the umask, and renames it into place, so every file it writes is
readable by its owner only. An artifact trained on a host and mounted into the container
(which runs as another user, uid 10001) then cannot be loaded. :func:`save_tensors` writes
the same bytes and gives the file the mode an ordinary ``open(path, "w")`` would have: 0666
less the process umask (or what a default ACL on the directory says).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def save_tensors(tensors: Mapping[str, np.ndarray], path: str | Path) -> None:
    """``safetensors.numpy.save_file(tensors, path)``, with an ordinary file's mode.

    Args:
        tensors: ``{name: array}`` of numeric arrays.
        path: the file to write; an existing file is replaced and keeps its mode.

    Raises:
        whatever ``save_file`` raises (a failed write leaves no new file behind).
    """
    from safetensors.numpy import save_file

    path = Path(path)
    existed = path.exists()
    # Create (not truncate) the file as any other writer would: the kernel applies the
    # umask and default ACLs, and the mode it ends up with is the one to keep.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
    mode = stat.S_IMODE(path.stat().st_mode)
    try:
        save_file(dict(tensors), str(path))
    except BaseException:
        if not existed:
            path.unlink(missing_ok=True)
        raise
    os.chmod(path, mode)
