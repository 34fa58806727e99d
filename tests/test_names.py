"""Names: artifact references, aliases, listing prefixes and manifest entry paths."""

from __future__ import annotations

import pytest

from artifactfs.errors import ArtifactFSError, InvalidPath, InvalidReference
from artifactfs.names import (
    LATEST,
    Ref,
    check_alias,
    check_entry_path,
    check_name,
    parse_prefix,
    parse_ref,
    parse_version,
    split_dir,
)

# -- references ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("acme/vision/ds", Ref("acme", "vision", "ds", None)),
        ("acme/vision/ds:latest", Ref("acme", "vision", "ds", "latest")),
        ("acme/vision/ds:v0", Ref("acme", "vision", "ds", "v0")),
        ("acme/vision/ds:v12", Ref("acme", "vision", "ds", "v12")),
        ("acme/vision/ds:best", Ref("acme", "vision", "ds", "best")),
        ("my-team/proj_1/data.set-2:prod+1", Ref("my-team", "proj_1", "data.set-2", "prod+1")),
        ("_e/0p/N", Ref("_e", "0p", "N", None)),
    ],
)
def test_parse_ref_valid(text: str, expected: Ref) -> None:
    ref = parse_ref(text)
    assert ref == expected
    assert str(ref) == text
    assert ref.collection == f"{expected.entity}/{expected.project}/{expected.name}"


def test_parse_ref_version_index() -> None:
    assert parse_ref("e/p/n:v7").version_index == 7
    assert parse_ref("e/p/n:latest").version_index is None
    assert parse_ref("e/p/n").version_index is None


def test_parse_ref_tags() -> None:
    assert parse_ref("e/p/n", default_tag=LATEST).tag == "latest"
    assert parse_ref("e/p/n:v1", default_tag=LATEST).tag == "v1"
    assert parse_ref("e/p/n:v1", require_tag=True).tag == "v1"
    with pytest.raises(InvalidReference, match="e/p/n"):
        parse_ref("e/p/n", require_tag=True)
    assert parse_ref("e/p/n").with_tag("v3") == Ref("e", "p", "n", "v3")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ds",
        "vision/ds",
        "acme/vision/ds/extra",
        "/vision/ds",
        "acme//ds",
        "acme/vision/",
        "acme/vision/:latest",
        "acme/vision/ds:",
        "acme/vision/ds:a:b",
        "acme/vision/ds:has space",
        "acme/vision/ds:a/b",
        "acme/vision/d s",
        "acme /vision/ds",
        "acme/vi\x00sion/ds",
        "-acme/vision/ds",
        ".acme/vision/ds",
        "acme/../ds",
        "acme/vision/ds:-x",
        "ac\u00e9me/vision/ds",
        "acme/vision/" + "n" * 129,
    ],
)
def test_parse_ref_invalid(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_ref(text)
    assert isinstance(info.value, ArtifactFSError)
    # The message is one line and says what was wrong.
    assert "\n" not in str(info.value)
    assert "invalid" in str(info.value)


def test_parse_ref_max_name_length() -> None:
    name = "n" * 128
    assert parse_ref(f"e/p/{name}").name == name


# -- names and aliases ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "A9", "data.set", "x_y-z", "_hidden", "9lives"])
def test_check_name_valid(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "-a", "a b", "a/b", "a:b", "é", "a" * 129])
def test_check_name_invalid(name: str) -> None:
    with pytest.raises(InvalidReference, match="invalid"):
        check_name(name, "entity")


@pytest.mark.parametrize("alias", ["latest", "best", "prod", "v", "vx", "v1a", "V1", "release-1.2", "rc+3", "a" * 128])
def test_check_alias_valid(alias: str) -> None:
    assert check_alias(alias) == alias


@pytest.mark.parametrize("alias", ["v0", "v1", "v42", "v123456789"])
def test_check_alias_rejects_version_names(alias: str) -> None:
    with pytest.raises(InvalidReference, match="version"):
        check_alias(alias)


@pytest.mark.parametrize("alias", ["", "a b", "a/b", "a:b", "-x", "+x", ".x", "a\tb", "a\x00", "a" * 129])
def test_check_alias_invalid(alias: str) -> None:
    with pytest.raises(InvalidReference, match="invalid alias"):
        check_alias(alias)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("v0", 0), ("v1", 1), ("v10", 10), ("v01", None), ("v", None), ("V1", None), ("latest", None), ("v-1", None)],
)
def test_parse_version(text: str, expected: int | None) -> None:
    assert parse_version(text) == expected


# -- listing prefixes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", ()), ("/", ()), ("e", ("e",)), ("e/", ("e",)), ("e/p", ("e", "p")), ("/e/p/n/", ("e", "p", "n"))],
)
def test_parse_prefix_valid(text: str, expected: tuple[str, ...]) -> None:
    assert parse_prefix(text) == expected


@pytest.mark.parametrize("text", ["e/p/n/x", "e//n", "e/p n", "e/../n", "e/p/n:v0"])
def test_parse_prefix_invalid(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_prefix(text)


# -- entry paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "a.txt",
        "dir/sub/file.bin",
        "latest",
        "v0",
        "dir/latest",
        ".hidden",
        "dir/.hidden/.x",
        "...",
        "..a",
        "a..",
        "with space.txt",
        " leading and trailing ",
        "dir with space/file name.txt",
        "\u00fcnic\u00f8de/\u65e5\u672c\u8a9e.txt",
        "emoji \U0001f600.png",
        "ab:c.txt",
        "data:v1.txt",
        "dir/a:b.txt",
        "dir/C:foo",
        "1:2",
        "x" * 255,
        "d/" + "x" * 255,
        "\u00e9" * 127,  # 254 bytes
        "tab\tname",
        "new\nline",
    ],
)
def test_entry_path_valid(path: str) -> None:
    assert check_entry_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/abs", "absolute"),
        ("/", "absolute"),
        ("//server/share", "absolute"),
        ("\\abs", "absolute"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
        (".", "'.'"),
        ("./a", "'.'"),
        ("a/./b", "'.'"),
        ("a/.", "'.'"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a/b/", "empty segment"),
        ("a\x00b", "NUL"),
        ("dir/\x00", "NUL"),
        ("C:foo", "drive letter"),
        ("c:", "drive letter"),
        ("Z:/x", "drive letter"),
        ("a\\b", "backslash"),
        ("dir\\..\\etc", "backslash"),
        ("x" * 256, "255 bytes"),
        ("d/" + "x" * 256 + "/f", "255 bytes"),
        ("\u00e9" * 128, "255 bytes"),  # 128 characters, 256 bytes
        ("bad\udcffsurrogate", "UTF-8"),
    ],
)
def test_entry_path_invalid(path: str, why: str) -> None:
    with pytest.raises(InvalidPath) as info:
        check_entry_path(path)
    message = str(info.value)
    assert why in message
    assert repr(path) in message, "the error names the offending path"


def test_entry_path_empty() -> None:
    with pytest.raises(InvalidPath, match="empty"):
        check_entry_path("")


def test_entry_path_not_a_string() -> None:
    with pytest.raises(InvalidPath, match="not a string"):
        check_entry_path(b"a.txt")  # type: ignore[arg-type]


def test_invalid_path_errno() -> None:
    import errno

    assert InvalidPath.errno == errno.EINVAL
    assert InvalidReference.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a.txt", ("", "a.txt")), ("a/b.txt", ("a", "b.txt")), ("a/b/c", ("a/b", "c")), ("", ("", ""))],
)
def test_split_dir(path: str, expected: tuple[str, str]) -> None:
    assert split_dir(path) == expected
