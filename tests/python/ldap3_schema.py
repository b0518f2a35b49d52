#!/usr/bin/env python3
"""Read a PigeonAir node's Root DSE and schema with Python's ldap3, as a Python admin
tool would, and print a JSON summary.

usage: ldap3_schema.py LDAP_URL BIND_DN PASSWORD

Exits non-zero with a message on stderr when anything is missing or wrong; prints one
JSON object on stdout when all checks pass.
"""

import json
import sys

try:
    from ldap3 import ALL, Connection, Server
except ImportError:
    sys.stderr.write("python ldap3 not installed: pip install ldap3 (the CI script does)\n")
    sys.exit(3)


def fail(msg):
    sys.stderr.write(msg + "\n")
    sys.exit(1)


def main():
    if len(sys.argv) != 4:
        fail(__doc__)
    url, dn, password = sys.argv[1:]

    server = Server(url, get_info=ALL, connect_timeout=10)
    conn = Connection(server, user=dn, password=password, receive_timeout=30)
    if not conn.bind():
        fail("bind as %s failed: %s" % (dn, conn.result))
    # ldap3 reads the schema after the bind when get_info=ALL; read it again if the
    # server's info arrived before the bind could see it.
    if server.schema is None or server.info is None:
        server.get_info_from_server(conn)

    schema = server.schema
    info = server.info
    if schema is None:
        fail("server.schema is None: the schema was not read")
    if info is None:
        fail("server.info is None: the Root DSE was not read")

    naming_contexts = [str(c) for c in (info.naming_contexts or [])]
    if "dc=pigeonair" not in [c.lower() for c in naming_contexts]:
        fail("dc=pigeonair not in namingContexts %r" % naming_contexts)

    if "inetOrgPerson" not in schema.object_classes:
        fail("objectClass inetOrgPerson not in the schema")
    iop = schema.object_classes["inetOrgPerson"]
    if "mailHost" not in schema.attribute_types:
        fail("attributeType mailHost not in the schema")
    mail_host = schema.attribute_types["mailHost"]
    if mail_host.oid != "2.16.840.1.113730.3.1.18":
        fail("mailHost has OID %r" % mail_host.oid)
    if not mail_host.single_value:
        fail("mailHost should be SINGLE-VALUE")
    mail = schema.attribute_types["mail"]

    if not conn.search(
        "dc=pigeonair",
        "(mail=alice@example.org)",
        attributes=["uid", "mail", "mailHost", "objectClass"],
    ):
        fail("search for alice failed: %s" % conn.result)
    entries = []
    for e in conn.entries:
        attrs = e.entry_attributes_as_dict
        entries.append(
            {
                "dn": e.entry_dn,
                "uid": [str(v) for v in attrs.get("uid", [])],
                "mail": [str(v) for v in attrs.get("mail", [])],
                "mailHost": [str(v) for v in attrs.get("mailHost", [])],
                "objectClass": [str(v) for v in attrs.get("objectClass", [])],
            }
        )
    conn.unbind()

    print(
        json.dumps(
            {
                "naming_contexts": naming_contexts,
                "supported_ldap_versions": [str(v) for v in (info.supported_ldap_versions or [])],
                "vendor_name": [str(v) for v in (info.vendor_name or [])],
                "object_classes": len(schema.object_classes),
                "attribute_types": len(schema.attribute_types),
                "inetOrgPerson": {
                    "oid": iop.oid,
                    "superior": [str(s) for s in (iop.superior or [])],
                    "kind": str(iop.kind),
                },
                "mailHost": {"oid": mail_host.oid, "single_value": bool(mail_host.single_value)},
                "mail": {"oid": mail.oid, "names": list(mail.name)},
                "search": entries,
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
