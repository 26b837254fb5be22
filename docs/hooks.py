"""MkDocs hooks (mkdocs.yml `hooks:`): the pages made from the code at every build, so they cannot drift from it.

- reference/config.md: every config group, option and key with its type, default, allowed values or range and help,
  from speechkit/config.py, speechkit/validation.py and conf/ (speechkit/reference.py writes it);
- reference/api.md: every module of the speechkit package, each rendered from its docstrings by mkdocstrings.

Both are added to the build in memory; nothing is written into docs/.
"""

from __future__ import annotations

import pkgutil

from mkdocs.structure.files import File

GENERATED = ("reference/config.md", "reference/api.md")


def api_markdown() -> str:
    """The API page: one section per module of the package, in the package's order, private ones (_name) left out."""
    import speechkit

    names = sorted(m.name for m in pkgutil.walk_packages(speechkit.__path__, "speechkit.")
                   if not any(part.startswith("_") for part in m.name.split(".")))
    out = ["# API", "",
           "Every module of the `speechkit` package, from its docstrings (made when the site is built). The scripts "
           "(`train.py`, `evaluate.py`, ...) are thin: each runs its module in `speechkit.commands`; the map of the "
           "house is in [Contributing](../contributing.md).", ""]
    for name in ["speechkit", *names]:
        out += [f"## `{name}`", "", f"::: {name}", "    options:", "      show_root_heading: false",
                "      show_root_toc_entry: false", ""]
    return "\n".join(out)


def on_files(files, config):
    """Add the generated pages to the build (in memory)."""
    from speechkit.reference import markdown

    for uri, content in (("reference/config.md", markdown()), ("reference/api.md", api_markdown())):
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=content))
    return files
