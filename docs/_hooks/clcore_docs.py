"""mkdocs hooks: the pages that list what is in the repository are generated from it at build
time, so they cannot go stale.

- ``<!-- config-groups -->`` (``clrun``) and ``<!-- config-groups-clta -->`` (``clta``) in a page
  become a table of every config group and option, with the first comment block of each YAML
  file as its description;
- ``<!-- experiments -->`` becomes a list of the experiments, and every
  ``experiments/<name>/README.md`` becomes the page ``experiments/<name>/`` together with the
  files next to it (plots, tables), so its relative links and images work. Links that leave the
  experiment's folder (to code, say) are shown as code spans: the site has no such page;
- each experiment page is added to the navigation, in the section that holds ``experiments.md``;
- MathJax, which typesets the equations (``pymdownx.arithmatex``), is copied into the site from the
  installed ``django-static-mathjax`` package (the ``docs`` extra), so the site shows equations
  without a network: nothing is fetched from a CDN when a page is read, and no JavaScript is kept
  in git.
"""

from __future__ import annotations

import importlib.util
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "src" / "clcore" / "configs"
EXPERIMENTS = ROOT / "experiments"
MAX_COPIED_BYTES = 5_000_000  # figures and tables, not checkpoints
LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")
# where mkdocs.yml's extra_javascript expects MathJax: tex-chtml.js, and what it loads on demand
MATHJAX_URI = "javascripts/mathjax"
MATHJAX_PARTS = ("tex-chtml.js", "input", "output/chtml", "ui", "a11y", "sre")


def _description(path: Path) -> str:
    """The first comment block of a YAML file, without the ``@package`` line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            if lines:
                break
            continue
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            lines.append(text)
    text = " ".join(lines)
    # plain text in a table cell: nothing in it may read as a link, a tag or emphasis
    for character, escaped in (
        ("\\", "\\\\"),
        ("|", "\\|"),
        ("[", "\\["),
        ("]", "\\]"),
        ("*", "\\*"),
        ("<", "&lt;"),
        (">", "&gt;"),
    ):
        text = text.replace(character, escaped)
    return text


def config_groups_table(root: Path) -> str:
    """Every group under ``root`` and its options; a sub-folder with its own ``__init__.py`` is the
    config tree of another command (``ta/`` is ``clta``'s) and is left out."""
    out = []
    other_roots = [p.parent for p in root.rglob("__init__.py") if p.parent != root]
    folders = {p.parent for p in root.rglob("*.yaml")} - {root}
    folders = [f for f in folders if not any(f == o or o in f.parents for o in other_roots)]
    for folder in sorted(folders):
        group = folder.relative_to(root).as_posix()
        out += [f"### `{group}`", "", "| option | what it is |", "|---|---|"]
        for path in sorted(folder.glob("*.yaml")):
            out.append(f"| `{group}={path.stem}` | {_description(path)} |")
        out.append("")
    return "\n".join(out)


def _experiment_readmes() -> list[Path]:
    return sorted(EXPERIMENTS.glob("*/README.md"))


def _title(readme: Path) -> str:
    for line in readme.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return readme.parent.name


def experiments_list() -> str:
    readmes = _experiment_readmes()
    if not readmes:
        return "*No experiment write-ups yet: each `experiments/<name>/README.md` appears here.*"
    return "\n".join(f"- [{_title(r)}](experiments/{r.parent.name}/index.md)" for r in readmes)


def mathjax_root() -> Path:
    """MathJax 3's browser build (``es5/``) as installed by ``django-static-mathjax``: a wheel on
    PyPI that ships the MathJax distribution and needs nothing else (not even Django)."""
    spec = importlib.util.find_spec("mathjax")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            es5 = Path(location) / "static" / "mathjax" / "es5"
            if (es5 / "tex-chtml.js").is_file():
                return es5
    raise PluginError(
        "MathJax is not installed: the docs typeset their equations with the copy that the "
        "'django-static-mathjax' package ships (`make install`, or `pip install -e .[docs]`)."
    )


def _nav_experiments(nav: list) -> bool:
    """Add every experiment page to the nav section that holds ``experiments.md``."""
    for index, item in enumerate(nav):
        entries = item.values() if isinstance(item, dict) else [item]
        for entry in entries:
            if isinstance(entry, list) and _nav_experiments(entry):
                return True
            if entry == "experiments.md":
                listed = {str(value) for other in nav if isinstance(other, dict) for value in other.values()}
                nav[index + 1 : index + 1] = [
                    {_title(r).split(":")[0].rstrip("?"): uri}
                    for r in _experiment_readmes()
                    if (uri := f"experiments/{r.parent.name}/index.md") not in listed
                ]
                return True
    return False


def on_config(config):
    if config["nav"] and not _nav_experiments(config["nav"]):
        raise PluginError("mkdocs.yml: no nav entry is experiments.md, so the experiment pages have no place")
    return config


def on_files(files, config):
    es5 = mathjax_root()
    mathjax = [es5.parents[0] / "LICENSE"]
    for part in MATHJAX_PARTS:
        path = es5 / part
        mathjax += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in mathjax:
        relative = path.relative_to(es5) if es5 in path.parents else Path(path.name)
        files.append(File.generated(config, f"{MATHJAX_URI}/{relative.as_posix()}", abs_src_path=str(path)))
    for readme in _experiment_readmes():
        folder = readme.parent
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or any(part.startswith((".", "__")) for part in relative.parts):
                continue
            if path.stat().st_size > MAX_COPIED_BYTES or (path.suffix == ".md" and path != readme):
                continue
            uri = f"experiments/{folder.name}/" + ("index.md" if path == readme else relative.as_posix())
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    markdown = markdown.replace("<!-- config-groups -->", config_groups_table(CONFIGS))
    markdown = markdown.replace("<!-- config-groups-clta -->", config_groups_table(CONFIGS / "ta"))
    markdown = markdown.replace("<!-- experiments -->", experiments_list())
    uri = page.file.src_uri
    if uri.startswith("experiments/") and uri.endswith("/index.md"):
        folder = uri.rsplit("/", 1)[0]

        def keep_or_quote(match):
            target = match.group(2)
            if re.match(r"^[a-z]+:|^#|^/", target):
                return match.group(0)
            resolved = posixpath.normpath(posixpath.join(folder, target.split("#")[0]))
            if files.get_file_from_path(resolved) is not None:
                return match.group(0)
            return f"{match.group(1).lstrip('!')} (`{target}`)"

        markdown = LINK.sub(keep_or_quote, markdown)
    return markdown
