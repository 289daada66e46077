"""MovieLens genre names: GroupLens's 19 canonical names and the spellings other sources use."""

from __future__ import annotations

import re
from collections.abc import Iterable

# GroupLens ml-100k order (the 19 flag columns of u.item and of the widedeep parquet).
MOVIELENS_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

# TFDS `movielens/*-ratings` ClassLabel names; `movie_genres` holds indices into this list.
TFDS_GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "IMAX",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "Unknown",
    "War",
    "Western",
    "(no genres listed)",
)

_ORDER = {g: i for i, g in enumerate(MOVIELENS_GENRES)}


def _fold(name: str) -> str:
    """Lower case, letters and digits only: "Film_Noir", "film-noir" -> "filmnoir"."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES: dict[str, str] = {_fold(g): g for g in MOVIELENS_GENRES}
_ALIASES.update(
    {
        "children": "Children's",  # TFDS and MovieLens 20m/25m
        "childrens": "Children's",
        "nogenreslisted": "unknown",  # MovieLens 20m/25m and TFDS "(no genres listed)"
        "scifi": "Sci-Fi",
        "sciencefiction": "Sci-Fi",
        "filmnoir": "Film-Noir",
        "noir": "Film-Noir",
    }
)


def canonical_genre(name: str | bytes) -> str:
    """GroupLens spelling of a MovieLens genre name ("Children" -> "Children's", ...).

    Raises:
        ValueError: the name is no known spelling of one of the 19 GroupLens genres.
    """
    text = name.decode("utf-8") if isinstance(name, bytes) else str(name)
    try:
        return _ALIASES[_fold(text)]
    except KeyError:
        raise ValueError(
            f"unknown MovieLens genre {text!r}: expected one of {', '.join(MOVIELENS_GENRES)} "
            "(or a known alternative spelling such as 'Children', 'Sci_Fi', "
            "'(no genres listed)'); add the spelling to training/data/genres.py if it is one"
        ) from None


def canonical_genres(names: Iterable[str | bytes]) -> tuple[str, ...]:
    """Canonical, de-duplicated genre names in GroupLens order."""
    return tuple(sorted({canonical_genre(n) for n in names}, key=_ORDER.__getitem__))
