"""Data folders in the formats docs/data.md describes: which layout a folder holds, its readers, and
the writer of the project's own layout (``dgr2 data import``).

A reader returns a :class:`~dgr2.recipe.formats.layouts.RawData` (ordered interactions per user and the
item table as catalog items); :mod:`dgr2.recipe.data` turns it into leave-one-out splits and features.
"""
