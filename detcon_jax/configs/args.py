"""Config arguments: the ``ARG`` of ``--config=file.py:ARG``, parsed against typed defaults.

An argument is a comma-separated list of ``key=value`` pairs and bare words, e.g.
``fh`` or ``masks=fh,steps=300``. Each key's default fixes its type; a bare word sets a
boolean key to True, or is the value of the `Choice` key that lists it. The same parser
reads the reproduction budgets (``--budget=small,num_steps=100``).
"""

from __future__ import annotations

from typing import Any

from ml_collections import config_dict

__all__ = ["Choice", "ConfigArgError", "parse_arg"]

_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


class ConfigArgError(ValueError):
    """A config argument that does not fit its keys; the message is one line naming it."""


class Choice:
    """A key of a config argument that takes one of fixed strings; the first is the default.

    ``name`` is how error messages call the key (e.g. ``'mask source'``).
    """

    def __init__(self, *values: str, name: str | None = None):
        if not values:
            raise TypeError("Choice needs at least one value")
        self.values = tuple(values)
        self.name = name

    @property
    def default(self) -> str:
        return self.values[0]


def _convert(key: str, text: str, default: Any, where: str) -> Any:
    def fail(kind: str) -> ConfigArgError:
        return ConfigArgError(f"{where}: {key} must be {kind}, got {text!r}")

    if isinstance(default, Choice):
        if text not in default.values:
            raise ConfigArgError(f"{where}: {default.name or key} must be one of "
                                 f"{default.values}, got {text!r}")
        return text
    if isinstance(default, bool):
        if text.lower() not in _TRUE + _FALSE:
            raise fail("true or false")
        return text.lower() in _TRUE
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise fail("an int") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise fail("a float") from None
    return text


def parse_arg(arg: str | None, **defaults: Any) -> config_dict.ConfigDict:
    """The values of config argument ``arg`` for keys ``defaults`` (a locked ConfigDict).

    Args:
      arg: ``'k1=v1,k2=v2,word'``; ``None`` or ``''`` gives the defaults.
      **defaults: key -> default value: a bool, int, float or str (its type types the value),
        or a `Choice`.

    Raises:
      ConfigArgError: an unknown key or word, a repeated key, or a value of the wrong type;
        one line naming the argument and the key.
    """
    for key, default in defaults.items():
        if not isinstance(default, (bool, int, float, str, Choice)):
            raise TypeError(f"parse_arg: default of {key!r} must be a bool, int, float, str "
                            f"or Choice, got {type(default).__name__}")
    where = f"config argument {arg!r}"
    values: dict[str, Any] = {}
    for token in (t.strip() for t in (arg or "").split(",")):
        if not token:
            continue
        key, sep, text = token.partition("=")
        key = key.strip()
        if not sep:
            key, text = _bare_word(token, defaults, where), token
            if isinstance(defaults[key], bool):
                text = "true"
        if key not in defaults:
            raise ConfigArgError(f"{where}: unknown key {key!r}; keys: {', '.join(defaults)}")
        if key in values:
            raise ConfigArgError(f"{where}: {key!r} is given twice")
        values[key] = _convert(key, text.strip(), defaults[key], where)
    result = {key: values.get(key, d.default if isinstance(d, Choice) else d)
              for key, d in defaults.items()}
    return config_dict.ConfigDict(result).lock()


def _bare_word(word: str, defaults: dict[str, Any], where: str) -> str:
    """The key a word without ``=`` sets: a boolean key of that name, or the Choice listing it."""
    if isinstance(defaults.get(word), bool):
        return word
    choices = {k: d for k, d in defaults.items() if isinstance(d, Choice)}
    owners = [k for k, d in choices.items() if word in d.values]
    if len(owners) == 1:
        return owners[0]
    if len(choices) == 1:  # the only choice: say what it accepts
        (key, choice), = choices.items()
        raise ConfigArgError(f"{where}: {choice.name or key} must be one of {choice.values}, "
                             f"got {word!r}")
    raise ConfigArgError(f"{where}: unknown word {word!r}; keys: {', '.join(defaults)}")
