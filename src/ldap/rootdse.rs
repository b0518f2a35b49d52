//! The Root DSE (RFC 4512 section 5.1) and the subschema subentry `cn=Subschema`
//! (section 4.2), built from the running configuration and schema.

use super::{controls, extended, LdapContext};
use crate::directory::dn::Dn;
use crate::directory::entry::{Attribute, StoredEntry};
use crate::directory::schema::{Schema, MATCHING_RULES, SYNTAXES};
use crate::directory::{Scope, SUBSCHEMA_DN};

/// The entry a base search on the Root DSE or `cn=Subschema` returns; `None` for any
/// other base or scope.
pub fn special_entry(ctx: &LdapContext, base: &str, scope: Scope) -> Option<StoredEntry> {
    let dn = Dn::parse(base).ok()?;
    if dn.is_root() {
        return (scope == Scope::Base).then(|| root_dse(ctx));
    }
    // The subschema subentry has one RDN; a longer DN cannot name it (this runs before
    // every search, so the common case stops here).
    if dn.depth() != 1 {
        return None;
    }
    let schema = ctx.dir.schema();
    let key = schema.dn_key(&dn).ok()?;
    (key == ctx.dir.subschema_key())
        .then(|| {
            if scope == Scope::One {
                None
            } else {
                Some(subschema(schema))
            }
        })
        .flatten()
}

fn root_dse(ctx: &LdapContext) -> StoredEntry {
    let mut attrs = vec![
        Attribute::new("objectClass", ["top", "extensibleObject"]),
        Attribute::new("namingContexts", [ctx.dir.suffix().to_string()]),
        Attribute::new("subschemaSubentry", [SUBSCHEMA_DN]),
        Attribute::new("supportedLDAPVersion", ["3"]),
        Attribute::new("supportedControl", controls::SUPPORTED.iter()),
        Attribute::new("supportedExtension", extended::SUPPORTED.iter()),
        Attribute::new("supportedSASLMechanisms", ["PLAIN", "EXTERNAL"]),
        // RFC 4526 absolute true/false filters, RFC 3673 "+", RFC 4529 "@class" not offered.
        Attribute::new(
            "supportedFeatures",
            [
                "1.3.6.1.4.1.4203.1.5.1",
                "1.3.6.1.4.1.4203.1.5.3",
                "1.3.6.1.1.14",
            ],
        ),
        Attribute::new("vendorName", ["PigeonAir"]),
        Attribute::new(
            "vendorVersion",
            [concat!("PigeonAir ", env!("CARGO_PKG_VERSION"))],
        ),
        Attribute::new("entryDN", [""]),
    ];
    attrs.retain(|a| !a.values.is_empty() || a.name == "supportedSASLMechanisms");
    StoredEntry {
        dn: String::new(),
        key: String::new(),
        attrs,
    }
}

fn subschema(schema: &Schema) -> StoredEntry {
    let attribute_types: Vec<String> = schema
        .attribute_types()
        .iter()
        .map(|a| a.definition.clone())
        .collect();
    let object_classes: Vec<String> = schema
        .object_classes()
        .iter()
        .map(|c| c.definition.clone())
        .collect();
    let syntaxes: Vec<String> = SYNTAXES
        .iter()
        .map(|(oid, desc, _)| format!("( {oid} DESC '{desc}' )"))
        .collect();
    let rules: Vec<String> = MATCHING_RULES
        .iter()
        .map(|(oid, name, syntax, _, _)| format!("( {oid} NAME '{name}' SYNTAX {syntax} )"))
        .collect();
    let mut rule_use = Vec::new();
    for (oid, name, _, _, _) in MATCHING_RULES {
        let applies: Vec<&str> = schema
            .attribute_types()
            .iter()
            .filter(|a| {
                a.rule_names()
                    .iter()
                    .flatten()
                    .any(|n| n.eq_ignore_ascii_case(name) || *n == *oid)
            })
            .map(|a| a.name())
            .collect();
        if !applies.is_empty() {
            rule_use.push(format!(
                "( {oid} NAME '{name}' APPLIES ( {} ) )",
                applies.join(" $ ")
            ));
        }
    }
    StoredEntry {
        dn: SUBSCHEMA_DN.to_string(),
        key: String::new(),
        attrs: vec![
            Attribute::new(
                "objectClass",
                ["top", "subentry", "subschema", "extensibleObject"],
            ),
            Attribute::new("cn", ["Subschema"]),
            Attribute::new("attributeTypes", attribute_types),
            Attribute::new("objectClasses", object_classes),
            Attribute::new("ldapSyntaxes", syntaxes),
            Attribute::new("matchingRules", rules),
            Attribute::new("matchingRuleUse", rule_use),
            Attribute::new("subschemaSubentry", [SUBSCHEMA_DN]),
            Attribute::new("entryDN", [SUBSCHEMA_DN]),
        ],
    }
}
