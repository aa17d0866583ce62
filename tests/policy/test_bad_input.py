"""Bad policies are refused with one message naming the value and its line:column."""

from __future__ import annotations

import pytest
from tests.policy.tailnet import USERS, node

from meshscale.control.models import User, UserID
from meshscale.policy import PolicyEngine, PolicyError, check_policy, parse_policy
from meshscale.policy.hujson import MAX_BYTES, MAX_DEPTH, parse, to_json

ACL = '{"action": "accept", "src": [%s], "dst": [%s]}'


def acl(src: str, dst: str, extra: str = "") -> str:
    rule = ACL % (src, dst)
    head = '"tagOwners": {"tag:db": []}, "hosts": {"web": "10.0.0.1"}'
    return "{" + head + extra + ', "acls": [' + rule + "]}"


def refused(text: str | bytes, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        parse_policy(text)


def test_undefined_group_names_line_and_column() -> None:
    text = "\n".join([
        "{", '  "groups": {"group:dev": ["dev@"]},', '  "acls": [', "    {",
        '      "action": "accept",', '      "dst": ["*:*"],',
        '      "src": ["dev@", "group:nosuch"]', "    }", "  ]", "}",
    ])  # fmt: skip
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert str(e.value) == 'undefined group "group:nosuch" at 7:23'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"rules": []}', r'unknown field "rules" in policy at 1:2'),
        ('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "users": []}]}',
         r'unknown field "users" in acl rule'),
        ('{"autoApprovers": {"route": {}}}', "unknown field"),
        ('{"ipsets": {}}', 'unknown field "ipsets"'),
        ('{"derpMap": {}}', 'unknown field "derpMap"'),
        (acl('"*"', '"tag:nosuch:22"'), r'undefined tag "tag:nosuch".* at 1:\d+'),
        (acl('"nosuchhost"', '"*:*"'), 'undefined host "nosuchhost"'),
        (acl('"10.0.0.1/8"', '"*:*"'), r'bad IP or CIDR "10.0.0.1/8"'),
        (acl('"300.1.1.0/24"', '"*:*"'), "bad IP or CIDR"),
        (acl('"*"', '"10.0.0.0/33:*"'), "bad IP or CIDR"),
        ('{"hosts": {"h": "nope"}}', 'bad host address "nope"'),
        ('{"autoApprovers": {"routes": {"10.0.0.1/8": []}}}', 'bad route "10.0.0.1/8"'),
        (acl('"*"', '"tag:db:ssh"'), 'bad port "ssh"'),
        (acl('"*"', '"tag:db"'), "needs a port"),
        (acl('"*"', '"tag:db:0"'), "first port must be >0"),
        (acl('"*"', '"tag:db:70000"'), "bad port range"),
        (acl('"*"', '"tag:db:90-80"'), "bad port range"),
        (acl('"*"', '"*:*"', ', "x": 1'), 'unknown field "x"'),
        ('{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}', 'action="deny"'),
        ('{"acls": [{"action": "accept", "src": ["*"], "proto": "*", "dst": ["*:*"]}]}',
         'bad protocol "\\*"'),
        ('{"acls": [{"action": "accept", "src": ["*"], "proto": "06", "dst": ["*:*"]}]}',
         'bad protocol "06"'),
        ('{"acls": [{"action": "accept", "src": ["*"], "proto": "icmp", "dst": ["*:22"]}]}',
         "takes no ports"),
        ('{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["icmp"]}]}', "needs ports"),
        ('{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["tcp:0"]}]}', "first port"),
        ('{"grants": [{"src": ["*"], "dst": ["*"]}]}', "ip and app can not both be empty"),
        ('{"grants": [{"src": ["*"], "dst": ["0.0.0.0/0"], "ip": ["*"]}]}',
         "autogroup:internet"),
        ('{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"], "via": ["a@"]}]}',
         "via takes tags"),
        ('{"grants": [{"src": ["*"], "dst": ["*"], "app": {"tailscale.com/cap/x": [{}]}}]}',
         "reserved"),
        (acl('"autogroup:self"', '"*:*"'), "not valid as a source"),
        (acl('"*"', '"autogroup:danger-all:*"'), "not valid as a destination"),
        (acl('"tag:db"', '"autogroup:self:*"'), "autogroup:self can only be used"),
        ('{"grants": [{"src": ["*"], "dst": ["autogroup:self"], "ip": ["*"]}]}',
         "autogroup:self can only be used"),
        (acl('"autogroup:nosuch"', '"*:*"'), "unknown autogroup"),
        ('{"groups": {"group:a": ["group:b"]}}', "group members must be users"),
        ('{"tagOwners": {"tag:1x": []}}', 'bad tag "tag:1x"'),
        ('{"tests": [{"src": "*"}]}', "accept or deny"),
        ('{"tests": [{"src": "*", "accept": ["10.0.0.0/8:22"]}]}', "not a CIDR"),
        ('{"tests": [{"src": "*", "accept": ["10.0.0.1:22-23"]}]}', "one port"),
        ('{"ssh": [{"action": "nope", "src": ["*"], "dst": ["*"], "users": []}]}',
         "bad ssh action"),
        ('{"randomizeClientPort": "yes"}', "true or false"),
        ('{"acls": {}}', "acls must be a list"),
        ("[]", "policy must be an object"),
        ('{"acls": [,]}', r"invalid HuJSON at 1:11"),
        ('{"a": 1 "b": 2}', r"invalid HuJSON at 1:9: expected ',' or '}'"),
        ('{"a": "x\n"}', r"invalid HuJSON at 1:9: control character"),
        ('{"a": 1} x', "unexpected text after the value"),
        ('{"a": 1, "a": 2}', "duplicate key"),
        ("/* open", "unterminated"),
        (b'{"a": "\xff"}', "not UTF-8"),
    ],
)  # fmt: skip
def test_refused(text: str, match: str) -> None:
    refused(text, match)


def test_ten_megabytes_is_refused() -> None:
    big = '{"hosts": {' + ",".join(f'"h{i}": "10.0.0.1"' for i in range(400_000)) + "}}"
    assert len(big) > 10_000_000 / 2
    refused(big * 2, f"the limit is {MAX_BYTES}")
    refused(big.encode() * 2, f"the limit is {MAX_BYTES}")


def test_deep_nesting_is_refused() -> None:
    refused("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper than")
    refused("[" * 100_000, "nested deeper than")
    parse("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))


def test_hujson_standardizes_comments_and_trailing_commas() -> None:
    text = '// head\n{"a": [1, 2.5e1, -3,], /* mid */ "b": {"c": "x\\u00e9\\n",}, "d": null,}\n'
    assert to_json(text) == '{"a": [1, 25.0, -3], "b": {"c": "xé\\n"}, "d": null}'
    node = parse('{\n  "k": [true]}')
    assert node.value["k"].at == "2:8"  # type: ignore[index]


def test_keys_match_case_insensitively_and_hash_keys_are_dropped() -> None:
    p = parse_policy('{"ACLs": [{"Action": "accept", "#note": "x", "SRC": ["*"], "dst": ["*:*"]}]}')
    assert p.rules is not None and len(p.rules) == 1


def test_ssh_and_postures_are_stored_with_a_warning() -> None:
    p = parse_policy(
        '{"postures": {}, "ssh": [{"action": "accept", "src": ["autogroup:member"],'
        ' "dst": ["autogroup:self"], "users": ["root", "autogroup:nonroot"]}]}'
    )
    assert len(p.ssh) == 1
    assert any("not served" in w for w in p.warnings)
    assert any("postures" in w for w in p.warnings)


def test_ambiguous_user_refused_unknown_user_names_no_one() -> None:
    e = PolicyEngine()
    e.set_users([*USERS, User(UserID(9), "alice")])  # a second "alice"
    e.set_nodes([node(1, USERS[0])])
    with pytest.raises(PolicyError, match='user "alice@" matches 2 users'):
        e.set_policy(acl('"alice@"', '"*:*"'))
    e.set_policy(acl('"ghost@example.com"', '"*:*"'))
    assert 'user "ghost@example.com" matches no user' in e.warnings
    assert e.filter_for(node(1, USERS[0])) == []


def test_check_policy_does_not_apply_and_runs_tests() -> None:
    text = acl('"*"', '"web:80"', ', "tests": [{"src": "10.1.1.1", "accept": ["web:81"]}]')
    with pytest.raises(PolicyError, match="should accept"):
        check_policy(text, USERS, [])
    # no node holds or routes web: nothing can accept for it
    check_policy(acl('"*"', '"web:80"', ', "tests": [{"src": "10.1.1.1", "deny": ["web:80"]}]'))


def test_a_refused_policy_keeps_the_old_one() -> None:
    e = PolicyEngine()
    e.set_policy('{"acls": []}')
    with pytest.raises(PolicyError):
        e.set_policy('{"acls": [{"action": "accept", "src": ["group:x"], "dst": ["*:*"]}]}')
    assert e.text == '{"acls": []}'


def test_autogroup_shared_is_accepted_and_names_no_one_without_guests() -> None:
    # Node sharing is enforced now (tests/policy/test_sharing.py): no warning.
    p = parse_policy(acl('"autogroup:shared"', '"*:*"'))
    assert not any("autogroup:shared" in w for w in p.warnings)
    e = PolicyEngine()
    e.set_users(USERS)
    e.set_nodes([node(1, USERS[0])])
    e.set_policy(acl('"autogroup:shared"', '"*:*"'))
    assert e.filter_for(node(1, USERS[0])) == []
