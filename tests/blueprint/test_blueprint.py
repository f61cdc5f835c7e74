"""Blueprint parsing and validation: every rule rejects its bad input with a located message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from afield.blueprint import MAX_BLUEPRINT_BYTES, Blueprint, load, parse
from afield.errors import AfieldError, BlueprintError, Problem

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"
HEAD = 'name = "img"\nversion = "1.0.0"\n'
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMr+JNWl7so6gtwbja/RJT9wP8LV0TJEdzW7QCA0AEWd a@b"
HASH = "$y$j9T$abcdefghijklmnopqrstu.$ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm12"


def problems(toml: str) -> list[Problem]:
    """Parse ``toml`` expecting failure; return the problems."""
    with pytest.raises(BlueprintError) as info:
        parse(toml)
    return info.value.problems


def only(toml: str) -> Problem:
    """Parse ``toml`` expecting exactly one problem; return it."""
    found = problems(toml)
    assert len(found) == 1, found
    return found[0]


def only_limited(text: str, limit: int) -> Problem:
    """Parse ``text`` under a byte limit expecting exactly one problem; return it."""
    with pytest.raises(BlueprintError) as info:
        parse(text, max_bytes=limit)
    [problem] = info.value.problems
    return problem


def custom(body: str) -> str:
    """A minimal blueprint followed by ``body`` (TOML under tables of its own)."""
    return HEAD + body


# --- valid blueprints -----------------------------------------------------------------------


def test_example_gateway_validates() -> None:
    # The shipped example must stay valid: docs and the demo compose it.
    blueprint = load(EXAMPLE)
    assert blueprint.name == "gateway"
    assert blueprint.version == "1.0.0"
    assert [p.name for p in blueprint.packages] == ["openssh-server", "curl", "nftables", "python3"]
    assert blueprint.customizations.hostname == "gateway"
    assert blueprint.kernel_args == ("console=ttyS0,115200", "quiet")
    assert blueprint.kernel_package == "linux-image-cloud-amd64"
    assert blueprint.customizations.user[0].groups == ("sudo", "edge")
    services = blueprint.customizations.services
    assert services is not None
    assert services.enabled == ("ssh.service", "nftables.service")
    assert blueprint.customizations.files[0].path == "/etc/gateway/gateway.conf"
    assert blueprint.source_date_epoch == 1767225600
    assert blueprint.stream == "stable"
    assert blueprint.sha256 == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()


def test_minimal_blueprint_gets_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Missing optional tables must not leave None where callers expect a value.
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    blueprint = parse(HEAD)
    assert blueprint.description == ""
    assert blueprint.distro == "debian-12"
    assert blueprint.packages == ()
    assert blueprint.stream == "stable"
    assert blueprint.kernel_package == "linux-image-amd64"
    assert blueprint.kernel_args == ()
    assert blueprint.source_date_epoch == 0


def test_models_are_immutable() -> None:
    # A blueprint shared between compose stages must not be changed by one of them.
    blueprint = parse(HEAD)
    with pytest.raises(ValidationError):
        blueprint.name = "other"
    assert isinstance(blueprint.packages, tuple)


def test_sha256_is_of_the_exact_bytes() -> None:
    # A commit's afield.blueprint.sha256 must change with any byte of the source, comments too.
    data = HEAD.encode()
    assert parse(data).sha256 == hashlib.sha256(data).hexdigest()
    assert parse(HEAD).sha256 == parse(data).sha256
    assert parse(HEAD + "# comment\n").sha256 != parse(HEAD).sha256


def test_blueprint_source_date_epoch_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stray SOURCE_DATE_EPOCH in the builder's environment must not override the blueprint.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "42")
    assert parse(custom("[customizations.afield]\nsource_date_epoch = 7\n")).source_date_epoch == 7


def test_environment_source_date_epoch_is_used_without_blueprint_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reproducible builds set SOURCE_DATE_EPOCH; it applies when the blueprint has none.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "42")
    assert parse(HEAD).source_date_epoch == 42


@pytest.mark.parametrize("value", ["", "-1", "abc", "1.5", " 42"])
def test_invalid_environment_source_date_epoch_is_ignored(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # A malformed SOURCE_DATE_EPOCH must fall back to 0, not crash the build.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    assert parse(HEAD).source_date_epoch == 0


def test_kernel_name_and_stream_come_from_the_blueprint() -> None:
    # Custom kernels and streams must reach compose unchanged.
    blueprint = parse(
        custom(
            '[customizations.kernel]\nname = "linux-image-rt-amd64"\n'
            "append = \"quiet 'a b'\"\n"
            '[customizations.afield]\nstream = "beta"\n'
        )
    )
    assert blueprint.kernel_package == "linux-image-rt-amd64"
    assert blueprint.kernel_args == ("quiet", "a b")
    assert blueprint.stream == "beta"


# --- reading --------------------------------------------------------------------------------


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    # A typo in the path must be a BlueprintError naming the file, not an OSError.
    path = tmp_path / "nope.toml"
    with pytest.raises(BlueprintError) as info:
        load(path)
    assert info.value.path == path
    assert "cannot read" in info.value.problems[0].message
    assert isinstance(info.value, AfieldError)
    assert info.value.user_error


def test_directory_as_blueprint_is_rejected(tmp_path: Path) -> None:
    # Passing a directory must be reported like any unreadable file.
    with pytest.raises(BlueprintError) as info:
        load(tmp_path)
    assert "cannot read" in info.value.problems[0].message


def test_oversized_blueprint_is_rejected_before_parsing(tmp_path: Path) -> None:
    # A huge (or endless) file must not be read whole or parsed.
    path = tmp_path / "big.toml"
    path.write_bytes(HEAD.encode() + b"=" * MAX_BLUEPRINT_BYTES)
    with pytest.raises(BlueprintError) as info:
        load(path)
    [problem] = info.value.problems
    assert problem.location == ""
    assert str(MAX_BLUEPRINT_BYTES) in problem.message


def test_blueprint_over_custom_limit_is_rejected() -> None:
    # The limit is configuration: a smaller one must apply to text input too.
    assert "limit of 10 bytes" in only_limited(HEAD, 10).message


def test_invalid_utf8_is_rejected_with_position() -> None:
    # Non-UTF-8 bytes must be located, not raise UnicodeDecodeError.
    with pytest.raises(BlueprintError) as info:
        parse(HEAD.encode() + b'description = "\xff"\n')
    [problem] = info.value.problems
    assert problem.location == "line 3, column 16"
    assert "UTF-8" in problem.message


def test_text_with_lone_surrogate_is_rejected() -> None:
    # A str that cannot be encoded must not raise UnicodeEncodeError.
    assert "Unicode" in only(HEAD + 'description = "\ud800"\n').message


def test_toml_syntax_error_gives_line_and_column() -> None:
    # A TOML typo must point at its line and column.
    problem = only(HEAD + "foo = = 1\n")
    assert problem.location == "line 3, column 7"
    assert problem.message.startswith("invalid TOML: ")
    assert "(at line" not in problem.message


def test_toml_error_at_end_of_document_gives_line_and_column() -> None:
    # An unfinished document must still be located.
    problem = only(HEAD + "packages = [\n")
    assert problem.location == "line 4, column 1"
    assert "invalid TOML" in problem.message


def test_deeply_nested_toml_is_rejected() -> None:
    # Deep nesting must not escape as RecursionError from tomllib.
    assert "nested too deeply" in only(HEAD + "x = " + "[" * 5000).message


def test_overlong_integer_is_rejected() -> None:
    # An integer past Python's digit limit must not escape as ValueError from tomllib.
    assert "too long" in only(HEAD + "x = 1" + "0" * 5000 + "\n").message


# --- top level ------------------------------------------------------------------------------


def test_missing_name_and_version_are_rejected() -> None:
    # Both required keys are reported at once.
    found = problems('description = "x"\n')
    assert [(p.location, p.message) for p in found] == [
        ("name", "required key is missing"),
        ("version", "required key is missing"),
    ]


@pytest.mark.parametrize("name", ["Gateway", "a/b", "-gw", "", "gw os", ".hidden"])
def test_image_name_unusable_in_ostree_ref_is_rejected(name: str) -> None:
    # The name becomes part of afield/<name>/<arch>/<stream>: no slashes, spaces or capitals.
    problem = only(f'name = "{name}"\nversion = "1.0.0"\n')
    assert problem.location == "name"
    assert "lowercase letters" in problem.message


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0.0", "1.0.0-rc1"])
def test_non_semver_version_is_rejected(version: str) -> None:
    # The OSTree version must be X.Y.Z so releases order predictably.
    problem = only(f'name = "img"\nversion = "{version}"\n')
    assert problem.location == "version"
    assert "X.Y.Z" in problem.message


def test_version_given_as_number_is_rejected() -> None:
    # No coercion: version = 1.0 is a float, not "1.0".
    problem = only('name = "img"\nversion = 1.0\n')
    assert (problem.location, problem.message) == ("version", "expected a string")


def test_other_distro_is_rejected() -> None:
    # afield composes Debian 12 only; another distro must not be silently built as Debian.
    problem = only(HEAD + 'distro = "fedora-40"\n')
    assert problem.location == "distro"
    assert 'only "debian-12" is supported' in problem.message


def test_unknown_top_level_key_lists_accepted_keys() -> None:
    # A misspelt key must not be silently ignored as osbuild does.
    problem = only(HEAD + 'descripton = "x"\n')
    assert problem.location == "descripton"
    assert problem.message == (
        "unknown key; accepted keys: containers, customizations, description, distro, name, "
        "packages, version"
    )


def test_unknown_nested_key_lists_accepted_keys() -> None:
    # A misspelt user key (passwd for password) must be named with the keys users accept.
    problem = only(custom('[[customizations.user]]\nname = "a"\npasswd = "x"\n'))
    assert problem.location == "customizations.user[0].passwd"
    assert problem.message.startswith("unknown key; accepted keys: description, gid, groups,")


def test_unknown_key_with_odd_characters_is_quoted() -> None:
    # A quoted TOML key must be shown so the user can find it.
    assert only(HEAD + '"a.b" = 1\n').location == '"a.b"'


@pytest.mark.parametrize("key", ["modules", "groups", "enabled_modules"])
def test_osbuild_top_level_key_is_rejected_as_unsupported(key: str) -> None:
    # An osbuild blueprint relying on these must fail loudly, not compose without them.
    problem = only(HEAD + f"{key} = []\n")
    assert (problem.location, problem.message) == (key, "osbuild key not supported by afield yet")


@pytest.mark.parametrize(
    "key",
    [
        "firewall",
        "installation_device",
        "partitioning_mode",
        "filesystem",
        "disk",
        "fdo",
        "openscap",
        "ignition",
        "fips",
        "repositories",
        "installer",
        "rhsm",
        "cacerts",
        "rpm",
    ],
)
def test_osbuild_customization_is_rejected_as_unsupported(key: str) -> None:
    # e.g. a firewall customization silently dropped would leave the device open.
    problem = only(custom(f"[customizations]\n{key} = 1\n"))
    assert problem.location == f"customizations.{key}"
    assert problem.message == "osbuild key not supported by afield yet"


def test_table_given_as_string_is_rejected() -> None:
    # customizations = "x" must be a type problem, not a crash.
    problem = only(HEAD + 'customizations = "x"\n')
    assert (problem.location, problem.message) == ("customizations", "expected a table")


def test_array_of_tables_given_as_table_is_rejected() -> None:
    # [customizations.user] instead of [[customizations.user]] must say which syntax is needed.
    problem = only(custom('[customizations.user]\nname = "a"\n'))
    assert problem.location == "customizations.user"
    assert "[[customizations.user]]" in problem.message


def test_several_problems_are_reported_at_once() -> None:
    # A user must be able to fix a blueprint in one pass.
    found = problems(
        'name = "Bad"\nversion = "1"\ncolour = 1\n'
        '[[packages]]\nname = "X"\n'
        '[customizations]\nhostname = "-x"\n'
        '[[customizations.user]]\nname = "a"\nuid = "1"\n'
        '[[customizations.files]]\npath = "/boot/x"\n'
    )
    assert {p.location for p in found} == {
        "name",
        "version",
        "colour",
        "packages[0].name",
        "customizations.hostname",
        "customizations.user[0].uid",
        "customizations.files[0].path",
    }


def test_pydantic_wording_is_never_shown() -> None:
    # Messages must speak blueprint, not pydantic internals or URLs.
    with pytest.raises(BlueprintError) as info:
        parse("name = 1\nversion = []\nx = 1\n[customizations]\nuser = 3\n")
    text = str(info.value)
    assert "pydantic" not in text
    assert "Input should" not in text
    assert "http" not in text


# --- packages -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Curl", "c", "-curl", "curl;rm", "curl_x"])
def test_bad_package_name_is_rejected(name: str) -> None:
    # Package names go to apt: only Debian's package-name characters pass.
    problem = only(HEAD + f'[[packages]]\nname = "{name}"\n')
    assert problem.location == "packages[0].name"
    assert "Debian package name" in problem.message


@pytest.mark.parametrize("version", ["1.0 ", "1.0;x", "", "1.0/2"])
def test_package_version_with_forbidden_characters_is_rejected(version: str) -> None:
    # Versions go into apt pins: no spaces, separators or shell characters.
    problem = only(HEAD + f'[[packages]]\nname = "curl"\nversion = "{version}"\n')
    assert problem.location == "packages[0].version"
    assert "Debian version" in problem.message


def test_package_versions_exact_and_glob_are_accepted() -> None:
    # Exact pins, epochs and globs are the two documented forms.
    blueprint = parse(
        HEAD + '[[packages]]\nname = "curl"\nversion = "1:7.88.1-10+deb12u5~bpo"\n'
        '[[packages]]\nname = "nftables"\nversion = "1.0.*"\n'
    )
    assert [p.version for p in blueprint.packages] == ["1:7.88.1-10+deb12u5~bpo", "1.0.*"]


def test_duplicate_package_is_rejected() -> None:
    # Two entries for one package (maybe with different pins) are ambiguous.
    problem = only(HEAD + '[[packages]]\nname = "curl"\n[[packages]]\nname = "curl"\n')
    assert problem.location == "packages[1].name"
    assert "duplicate package" in problem.message


# --- hostname, kernel -----------------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["-gw", "gw-", "gw_1", "a" * 64, "a..b", ""])
def test_invalid_hostname_is_rejected(hostname: str) -> None:
    # The hostname lands in /etc/hostname and DHCP requests: RFC 1123 only.
    problem = only(custom(f'[customizations]\nhostname = "{hostname}"\n'))
    assert problem.location == "customizations.hostname"
    assert "RFC 1123" in problem.message


def test_unclosed_quote_in_kernel_append_is_rejected() -> None:
    # Kernel arguments must split unambiguously.
    problem = only(custom('[customizations.kernel]\nappend = "quiet \'a"\n'))
    assert problem.location == "customizations.kernel.append"
    assert "shell line" in problem.message


def test_newline_in_kernel_append_is_rejected() -> None:
    # A newline could inject lines into the boot loader entry.
    problem = only(custom("[customizations.kernel]\nappend = \"quiet 'a\\ntitle x'\"\n"))
    assert problem.location == "customizations.kernel.append"
    assert "control characters" in problem.message


def test_bad_kernel_package_name_is_rejected() -> None:
    # The kernel package goes to apt like any other.
    problem = only(custom('[customizations.kernel]\nname = "Linux Image"\n'))
    assert problem.location == "customizations.kernel.name"


# --- users, groups, keys --------------------------------------------------------------------


def test_plain_text_password_is_rejected() -> None:
    # A clear-text password would be baked into every image and the repository.
    problem = only(custom('[[customizations.user]]\nname = "a"\npassword = "hunter2"\n'))
    assert problem.location == "customizations.user[0].password"
    assert "plain-text passwords are not accepted" in problem.message


def test_password_hash_with_colon_is_rejected() -> None:
    # A ':' would add fields to /etc/shadow.
    problem = only(custom('[[customizations.user]]\nname = "a"\npassword = "$6$x:0:0"\n'))
    assert problem.location == "customizations.user[0].password"


def test_crypt_hash_password_is_accepted() -> None:
    # The documented form: a crypt(3) hash.
    blueprint = parse(custom(f'[[customizations.user]]\nname = "a"\npassword = "{HASH}"\n'))
    assert blueprint.customizations.user[0].password == HASH


@pytest.mark.parametrize("uid", ["-1", "65535", "4294967296"])
def test_uid_out_of_range_is_rejected(uid: str) -> None:
    # Ids outside 0..65534 break or alias system accounts.
    problem = only(custom(f'[[customizations.user]]\nname = "a"\nuid = {uid}\n'))
    assert problem.location == "customizations.user[0].uid"
    assert "0 to 65534" in problem.message


def test_uid_given_as_string_is_rejected() -> None:
    # No str->int coercion: uid = "1000" is a mistake worth pointing out.
    problem = only(custom('[[customizations.user]]\nname = "a"\nuid = "1000"\n'))
    assert (problem.location, problem.message) == (
        "customizations.user[0].uid",
        "expected an integer",
    )


def test_boolean_as_gid_is_rejected() -> None:
    # true is not 1.
    problem = only(custom('[[customizations.group]]\nname = "g"\ngid = true\n'))
    assert (problem.location, problem.message) == (
        "customizations.group[0].gid",
        "expected an integer",
    )


@pytest.mark.parametrize("name", ["Alice", "a b", "a:b", "1abc", "a" * 33])
def test_invalid_user_name_is_rejected(name: str) -> None:
    # User names end up in /etc/passwd; separators or spaces would corrupt it.
    problem = only(custom(f'[[customizations.user]]\nname = "{name}"\n'))
    assert problem.location == "customizations.user[0].name"
    assert "user or group name" in problem.message


def test_colon_in_user_description_is_rejected() -> None:
    # A ':' in GECOS would shift /etc/passwd fields (e.g. the shell).
    problem = only(custom('[[customizations.user]]\nname = "a"\ndescription = "x:0:0"\n'))
    assert problem.location == "customizations.user[0].description"


@pytest.mark.parametrize("field", ["home", "shell"])
def test_relative_home_or_shell_is_rejected(field: str) -> None:
    # A relative home or shell means nothing at login.
    problem = only(custom(f'[[customizations.user]]\nname = "a"\n{field} = "bin/sh"\n'))
    assert problem.location == f"customizations.user[0].{field}"
    assert "absolute path" in problem.message


def test_duplicate_user_names_are_rejected() -> None:
    # Two definitions of one user: which password and key win?
    problem = only(
        custom('[[customizations.user]]\nname = "a"\n[[customizations.user]]\nname = "a"\n')
    )
    assert problem.location == "customizations.user[1].name"
    assert "customizations.user[0].name" in problem.message


def test_duplicate_uids_are_rejected() -> None:
    # Two users with one uid share every file.
    problem = only(
        custom(
            '[[customizations.user]]\nname = "a"\nuid = 1000\n'
            '[[customizations.user]]\nname = "b"\nuid = 1000\n'
        )
    )
    assert problem.location == "customizations.user[1].uid"
    assert "duplicate uid" in problem.message


def test_duplicate_group_names_and_gids_are_rejected() -> None:
    # Two groups with one name or gid are ambiguous.
    found = problems(
        custom(
            '[[customizations.group]]\nname = "g"\ngid = 2000\n'
            '[[customizations.group]]\nname = "g"\n'
            '[[customizations.group]]\nname = "h"\ngid = 2000\n'
        )
    )
    assert [p.location for p in found] == [
        "customizations.group[1].name",
        "customizations.group[2].gid",
    ]


def test_unknown_supplementary_group_is_rejected() -> None:
    # "wheel" does not exist on Debian; useradd would fail late in the compose.
    problem = only(custom('[[customizations.user]]\nname = "a"\ngroups = ["sudo", "wheel"]\n'))
    assert problem.location == "customizations.user[0].groups[1]"
    assert "unknown group 'wheel'" in problem.message
    assert "[[customizations.group]]" in problem.message


def test_standard_and_declared_groups_are_accepted() -> None:
    # Debian's standard groups and the blueprint's own groups need no further declaration.
    blueprint = parse(
        custom(
            '[[customizations.user]]\nname = "a"\ngroups = ["sudo", "dialout", "edge"]\n'
            '[[customizations.group]]\nname = "edge"\n'
        )
    )
    assert blueprint.customizations.user[0].groups == ("sudo", "dialout", "edge")


def test_sshkey_for_unknown_user_is_rejected() -> None:
    # A key for a user that is never created would silently grant nothing (or fail late).
    problem = only(custom(f'[[customizations.sshkey]]\nuser = "mallory"\nkey = "{KEY}"\n'))
    assert problem.location == "customizations.sshkey[0].user"
    assert "expected 'root' or a user from [[customizations.user]]" in problem.message


def test_sshkey_for_root_and_blueprint_user_is_accepted() -> None:
    # root always exists; blueprint users are created first.
    blueprint = parse(
        custom(
            f'[[customizations.sshkey]]\nuser = "root"\nkey = "{KEY}"\n'
            f'[[customizations.sshkey]]\nuser = "a"\nkey = "{KEY}"\n'
            '[[customizations.user]]\nname = "a"\n'
        )
    )
    assert [k.user for k in blueprint.customizations.sshkey] == ["root", "a"]


def test_ssh_key_with_newline_is_rejected() -> None:
    # A newline would add a second, unreviewed line to authorized_keys.
    problem = only(
        custom(f'[[customizations.sshkey]]\nuser = "root"\nkey = "{KEY}\\nssh-rsa AAAA evil"\n')
    )
    assert problem.location == "customizations.sshkey[0].key"
    assert "control characters" in problem.message


def test_ssh_key_without_key_data_is_rejected() -> None:
    # A bare word is no public key.
    problem = only(custom('[[customizations.user]]\nname = "a"\nkey = "AAAA"\n'))
    assert problem.location == "customizations.user[0].key"
    assert "OpenSSH public key" in problem.message


# --- timezone, locale -----------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["../../etc/passwd", "Europe/Berlin ", "", "/UTC"])
def test_invalid_timezone_is_rejected(zone: str) -> None:
    # The zone becomes a path under /usr/share/zoneinfo: no traversal.
    problem = only(custom(f'[customizations.timezone]\ntimezone = "{zone}"\n'))
    assert problem.location == "customizations.timezone.timezone"
    assert "Europe/Berlin" in problem.message


def test_invalid_ntp_server_is_rejected() -> None:
    # NTP servers are written to chrony/timesyncd config: host names or addresses only.
    problem = only(
        custom('[customizations.timezone]\nntpservers = ["pool.ntp.org", "10.0.0.1", "a b"]\n')
    )
    assert problem.location == "customizations.timezone.ntpservers[2]"
    assert "host name or an IP address" in problem.message


@pytest.mark.parametrize("language", ["english", "en_us.UTF-8", "en_US.UTF 8", ""])
def test_invalid_locale_is_rejected(language: str) -> None:
    # Locale names go to locale-gen.
    problem = only(custom(f'[customizations.locale]\nlanguages = ["{language}"]\n'))
    assert problem.location == "customizations.locale.languages[0]"
    assert "en_US.UTF-8" in problem.message


def test_invalid_keyboard_is_rejected() -> None:
    # The keyboard layout is written into a config file.
    problem = only(custom('[customizations.locale]\nkeyboard = "us\\"; x"\n'))
    assert problem.location == "customizations.locale.keyboard"


def test_languages_given_as_string_is_rejected() -> None:
    # languages = "en_US.UTF-8" must not be read as a list of characters.
    problem = only(custom('[customizations.locale]\nlanguages = "en_US.UTF-8"\n'))
    assert (problem.location, problem.message) == (
        "customizations.locale.languages",
        "expected an array",
    )


# --- services -------------------------------------------------------------------------------


def test_bare_service_name_means_service_unit() -> None:
    # "ssh" and "ssh.service" are the same unit; other unit types keep their suffix.
    blueprint = parse(
        custom(
            '[customizations.services]\nenabled = ["ssh", "fstrim.timer", "a.b", "getty@tty1"]\n'
        )
    )
    services = blueprint.customizations.services
    assert services is not None
    assert services.enabled == ("ssh.service", "fstrim.timer", "a.b.service", "getty@tty1.service")


def test_unit_in_two_lists_is_rejected() -> None:
    # Enabling and masking one unit is contradictory.
    problem = only(
        custom('[customizations.services]\nenabled = ["ssh"]\nmasked = ["ssh.service"]\n')
    )
    assert problem.location == "customizations.services.masked[0]"
    assert "also in customizations.services.enabled" in problem.message


@pytest.mark.parametrize("unit", ["ssh service", "../x", ".service", "", "a/b"])
def test_invalid_unit_name_is_rejected(unit: str) -> None:
    # Unit names become systemctl arguments and symlink names.
    problem = only(custom(f'[customizations.services]\ndisabled = ["{unit}"]\n'))
    assert problem.location == "customizations.services.disabled[0]"
    assert "systemd unit name" in problem.message


# --- files and directories ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/boot/x", "/home/x/y", "/etcx/a", "/etc", "/root/.ssh/x"])
def test_file_outside_allowed_prefixes_is_rejected(path: str) -> None:
    # Writing to /boot, /home or / would break the OSTree layout or user data.
    problem = only(custom(f'[[customizations.files]]\npath = "{path}"\n'))
    assert problem.location == "customizations.files[0].path"
    assert problem.message == "expected a path under one of /etc/, /usr/, /var/, /opt/"


@pytest.mark.parametrize("path", ["/etc/../boot/x", "/etc//x", "/etc/x/", "/etc/./x"])
def test_non_normalized_file_path_is_rejected(path: str) -> None:
    # '..' could escape the allowed prefixes; '//' and '/.' hide duplicates.
    problem = only(custom(f'[[customizations.files]]\npath = "{path}"\n'))
    assert problem.location == "customizations.files[0].path"
    assert "normalized" in problem.message


def test_relative_directory_path_is_rejected() -> None:
    # A relative path has no meaning inside the image.
    problem = only(custom('[[customizations.directories]]\npath = "etc/x"\n'))
    assert problem.location == "customizations.directories[0].path"
    assert "absolute" in problem.message


def test_path_with_newline_is_rejected() -> None:
    # Control characters in paths break tmpfiles.d lines and logs.
    problem = only(custom('[[customizations.files]]\npath = "/etc/a\\nb"\n'))
    assert problem.location == "customizations.files[0].path"
    assert "control characters" in problem.message


def test_duplicate_file_path_is_rejected() -> None:
    # Two contents for one path: which wins?
    problem = only(
        custom(
            '[[customizations.files]]\npath = "/etc/a"\n[[customizations.files]]\npath = "/etc/a"\n'
        )
    )
    assert problem.location == "customizations.files[1].path"
    assert "customizations.files[0].path" in problem.message


def test_file_at_directory_path_is_rejected() -> None:
    # A path cannot be both a directory and a file.
    problem = only(
        custom(
            '[[customizations.directories]]\npath = "/etc/a"\n'
            '[[customizations.files]]\npath = "/etc/a"\n'
        )
    )
    assert problem.location == "customizations.files[0].path"
    assert "customizations.directories[0].path" in problem.message


@pytest.mark.parametrize("mode", ['"999"', '"12"', '"07777"', '"rwx"', '"0o644"', "644"])
def test_invalid_mode_is_rejected(mode: str) -> None:
    # Modes are octal strings; 644 as an integer would be read as decimal.
    problem = only(custom(f'[[customizations.files]]\npath = "/etc/a"\nmode = {mode}\n'))
    assert problem.location == "customizations.files[0].mode"


def test_file_and_directory_defaults() -> None:
    # Defaults follow osbuild: 0644 files, 0755 directories, owned by root.
    blueprint = parse(
        custom(
            '[[customizations.files]]\npath = "/etc/a"\n'
            '[[customizations.directories]]\npath = "/var/lib/a"\n'
        )
    )
    file, directory = blueprint.customizations.files[0], blueprint.customizations.directories[0]
    assert (file.mode, file.user, file.group, file.data, file.ensure_parents) == (
        "0644",
        None,
        None,
        "",
        False,
    )
    assert directory.mode == "0755"


def test_unknown_file_owner_is_rejected() -> None:
    # chown to a name that does not exist fails late in the compose.
    found = problems(
        custom('[[customizations.files]]\npath = "/etc/a"\nuser = "ghost"\ngroup = "ghosts"\n')
    )
    assert [p.location for p in found] == [
        "customizations.files[0].user",
        "customizations.files[0].group",
    ]
    assert "unknown user 'ghost'" in found[0].message
    assert "unknown group 'ghosts'" in found[1].message


def test_known_and_numeric_file_owners_are_accepted() -> None:
    # root, blueprint users and groups, standard groups and numeric ids are fine.
    blueprint = parse(
        custom(
            '[[customizations.user]]\nname = "a"\n'
            '[[customizations.group]]\nname = "g"\n'
            '[[customizations.files]]\npath = "/etc/1"\nuser = "a"\ngroup = "g"\n'
            '[[customizations.files]]\npath = "/etc/2"\nuser = "root"\ngroup = "adm"\n'
            '[[customizations.directories]]\npath = "/etc/3"\nuser = 1000\ngroup = 1000\n'
        )
    )
    assert blueprint.customizations.directories[0].user == 1000


@pytest.mark.parametrize("value", ["true", "1.5", "[]", "70000", '"Bad Name"'])
def test_invalid_file_owner_value_is_rejected(value: str) -> None:
    # Owners are names or ids 0..65534, nothing else.
    problem = only(custom(f'[[customizations.directories]]\npath = "/etc/a"\ngroup = {value}\n'))
    assert problem.location == "customizations.directories[0].group"


def test_ensure_parents_given_as_string_is_rejected() -> None:
    # No coercion: "yes" is not true.
    problem = only(custom('[[customizations.files]]\npath = "/etc/a"\nensure_parents = "yes"\n'))
    assert problem.location == "customizations.files[0].ensure_parents"
    assert "boolean" in problem.message


# --- afield table ---------------------------------------------------------------------------


def test_negative_source_date_epoch_is_rejected() -> None:
    # A timestamp before 1970 is not a valid SOURCE_DATE_EPOCH.
    problem = only(custom("[customizations.afield]\nsource_date_epoch = -1\n"))
    assert problem.location == "customizations.afield.source_date_epoch"
    assert "from 0" in problem.message


def test_stream_unusable_in_ostree_ref_is_rejected() -> None:
    # The stream is the last part of the OSTree ref: no slashes.
    problem = only(custom('[customizations.afield]\nstream = "stable/../x"\n'))
    assert problem.location == "customizations.afield.stream"


def test_unknown_afield_key_lists_accepted_keys() -> None:
    # A misspelt afield key must not be ignored.
    problem = only(custom("[customizations.afield]\nsource_date = 1\n"))
    assert problem.location == "customizations.afield.source_date"
    assert (
        problem.message
        == "unknown key; accepted keys: devicetree, manifests, source_date_epoch, stream"
    )


def test_error_names_the_source_file(tmp_path: Path) -> None:
    # The CLI prints the file name with every problem.
    path = tmp_path / "bp.toml"
    path.write_text('name = "img"\n')
    with pytest.raises(BlueprintError) as info:
        load(path)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: version: ")


def test_blueprint_is_exported() -> None:
    # The public API returns the exported model type.
    assert isinstance(parse(HEAD), Blueprint)
