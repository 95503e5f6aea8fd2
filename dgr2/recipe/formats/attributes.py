"""Anonymous attribute lists (S3-Rec's ``item2attributes.json``) mapped onto the catalog's brand and
category.

S3-Rec builds an item's list as its brand, when that brand is frequent enough, followed by the
category names of its paths (root dropped), all in one id space with no names. So the list does
not say whether its first id is a brand. What the construction does guarantee is that a brand only
ever stands first: an id seen at a later position in any item's list is a category. The rule:

* brand: the first id, when no list has it at a later position; else none;
* category: the last id that is not the brand (the most specific category the list kept), else none.

On Beauty, where the names are known, the first rule finds 7,454 of the 7,458 items whose list
starts with a brand and wrongly takes 38 more, whose brand is the empty or literal "Unknown" one
(a stand-in for "no brand" that S3-Rec kept as if it were one); the second gives the leaf category for 12,012
of 12,101 items (docs/data.md, "Anonymous attributes").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Attribute = int | str


def later_ids(lists: Mapping[str, Sequence[Attribute]]) -> set[Attribute]:
    """Every id that some list has after its first position: by S3-Rec's construction, a category."""
    return {a for attrs in lists.values() for a in attrs[1:]}


def brand_and_category(lists: Mapping[str, Sequence[Attribute]]) -> dict[str, tuple[str | None, str | None]]:
    """``item -> (brand, category)`` names (the ids as strings) by the rule of the module docstring."""
    later = later_ids(lists)
    out = {}
    for item, attrs in lists.items():
        brand = attrs[0] if attrs and attrs[0] not in later else None
        rest = attrs[1:] if brand is not None else attrs
        category = rest[-1] if rest else None
        out[item] = (None if brand is None else str(brand), None if category is None else str(category))
    return out
