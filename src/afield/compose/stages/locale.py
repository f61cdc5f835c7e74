"""Stage afield.locale: generate the image's locales and set the default one and the keymap.

Runs the image's ``locale-gen`` for the blueprint's languages (from the ``locales`` package, which
the plan adds when languages are given), writes ``/etc/default/locale`` and ``/etc/locale.conf``,
and ``/etc/vconsole.conf`` for the console keymap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afield.compose._tree import chroot
from afield.compose.pipeline import Facts, StageContext
from afield.errors import StageError

NAME = "afield.locale"
CHECKPOINT = False


def _charset(language: str) -> str:
    return language.split(".", 1)[1].split("@", 1)[0] if "." in language else "ISO-8859-1"


def run(ctx: StageContext, options: Mapping[str, Any]) -> Facts:
    """Generate locales and write the defaults; facts ``locale``."""
    languages: list[str] = list(options["languages"])
    etc = ctx.tree / "etc"
    if languages:
        supported = ctx.tree / "usr" / "share" / "i18n" / "SUPPORTED"
        known = set(supported.read_text().splitlines()) if supported.is_file() else set()
        wanted = [f"{lang} {_charset(lang)}" for lang in languages]
        unknown = [lang for lang, line in zip(languages, wanted, strict=True) if line not in known]
        if unknown:
            raise StageError(
                NAME,
                f"customizations.locale.languages: unsupported locale {', '.join(unknown)} "
                "(use names from /usr/share/i18n/SUPPORTED such as en_US.UTF-8)",
                user_error=True,
            )
        (etc / "locale.gen").write_text("".join(f"{line}\n" for line in wanted))
        chroot(ctx.tree, ["locale-gen"], log=ctx.log)
        default = f"LANG={languages[0]}\n"
        (etc / "default").mkdir(exist_ok=True)
        (etc / "default" / "locale").write_text(default)
        (etc / "locale.conf").write_text(default)
    keyboard = options.get("keyboard")
    if keyboard:
        (etc / "vconsole.conf").write_text(f"KEYMAP={keyboard}\n")
    return {"locale": languages[0] if languages else "C.UTF-8"}
