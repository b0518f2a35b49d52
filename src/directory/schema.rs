//! The schema: attribute types, object classes, syntaxes and matching rules.
//!
//! Attribute types and object classes are read from `schema/*.schema` files in the
//! RFC 4512 description form (the `attributetype ( ... )` / `objectclass ( ... )` layout
//! of OpenLDAP's schema files). Syntaxes and matching rules are built in: the server can
//! only check what it has code for. [`Schema`] resolves names and OIDs, follows `SUP`
//! chains, checks entries against their object classes and normalises values and DNs by
//! each attribute's matching rules.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;

use super::dn::{Ava, Dn, Rdn};

/// An LDAP syntax the server can validate (RFC 4517 section 3.3 and RFC 4530).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Syntax {
    /// 1.3.6.1.4.1.1466.115.121.1.15
    DirectoryString,
    /// 1.3.6.1.4.1.1466.115.121.1.26
    Ia5String,
    /// 1.3.6.1.4.1.1466.115.121.1.27
    Integer,
    /// 1.3.6.1.4.1.1466.115.121.1.7
    Boolean,
    /// 1.3.6.1.4.1.1466.115.121.1.12
    Dn,
    /// 1.3.6.1.4.1.1466.115.121.1.34
    NameAndOptionalUid,
    /// 1.3.6.1.4.1.1466.115.121.1.38
    Oid,
    /// 1.3.6.1.4.1.1466.115.121.1.24
    GeneralizedTime,
    /// 1.3.6.1.4.1.1466.115.121.1.40 and binary syntaxes (JPEG, certificates, ...)
    OctetString,
    /// 1.3.6.1.4.1.1466.115.121.1.44
    PrintableString,
    /// 1.3.6.1.4.1.1466.115.121.1.36
    NumericString,
    /// 1.3.6.1.4.1.1466.115.121.1.50
    TelephoneNumber,
    /// 1.3.6.1.4.1.1466.115.121.1.11
    CountryString,
    /// 1.3.6.1.4.1.1466.115.121.1.6
    BitString,
    /// 1.3.6.1.1.16.1
    Uuid,
    /// Any other syntax: accepted as UTF-8 text.
    Other,
}

/// The syntaxes published in `cn=Subschema`: (OID, description, the checker used).
pub const SYNTAXES: &[(&str, &str, Syntax)] = &[
    (
        "1.3.6.1.4.1.1466.115.121.1.3",
        "Attribute Type Description",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.5",
        "Binary",
        Syntax::OctetString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.6",
        "Bit String",
        Syntax::BitString,
    ),
    ("1.3.6.1.4.1.1466.115.121.1.7", "Boolean", Syntax::Boolean),
    (
        "1.3.6.1.4.1.1466.115.121.1.8",
        "Certificate",
        Syntax::OctetString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.9",
        "Certificate List",
        Syntax::OctetString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.10",
        "Certificate Pair",
        Syntax::OctetString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.11",
        "Country String",
        Syntax::CountryString,
    ),
    ("1.3.6.1.4.1.1466.115.121.1.12", "DN", Syntax::Dn),
    (
        "1.3.6.1.4.1.1466.115.121.1.14",
        "Delivery Method",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.15",
        "Directory String",
        Syntax::DirectoryString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.16",
        "DIT Content Rule Description",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.17",
        "DIT Structure Rule Description",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.21",
        "Enhanced Guide",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.22",
        "Facsimile Telephone Number",
        Syntax::Other,
    ),
    ("1.3.6.1.4.1.1466.115.121.1.23", "Fax", Syntax::OctetString),
    (
        "1.3.6.1.4.1.1466.115.121.1.24",
        "Generalized Time",
        Syntax::GeneralizedTime,
    ),
    ("1.3.6.1.4.1.1466.115.121.1.25", "Guide", Syntax::Other),
    (
        "1.3.6.1.4.1.1466.115.121.1.26",
        "IA5 String",
        Syntax::Ia5String,
    ),
    ("1.3.6.1.4.1.1466.115.121.1.27", "INTEGER", Syntax::Integer),
    ("1.3.6.1.4.1.1466.115.121.1.28", "JPEG", Syntax::OctetString),
    (
        "1.3.6.1.4.1.1466.115.121.1.30",
        "Matching Rule Description",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.31",
        "Matching Rule Use Description",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.34",
        "Name And Optional UID",
        Syntax::NameAndOptionalUid,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.35",
        "Name Form Description",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.36",
        "Numeric String",
        Syntax::NumericString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.37",
        "Object Class Description",
        Syntax::Other,
    ),
    ("1.3.6.1.4.1.1466.115.121.1.38", "OID", Syntax::Oid),
    (
        "1.3.6.1.4.1.1466.115.121.1.39",
        "Other Mailbox",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.40",
        "Octet String",
        Syntax::OctetString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.41",
        "Postal Address",
        Syntax::DirectoryString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.43",
        "Presentation Address",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.44",
        "Printable String",
        Syntax::PrintableString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.49",
        "Supported Algorithm",
        Syntax::OctetString,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.50",
        "Telephone Number",
        Syntax::TelephoneNumber,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.51",
        "Teletex Terminal Identifier",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.52",
        "Telex Number",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.54",
        "LDAP Syntax Description",
        Syntax::Other,
    ),
    (
        "1.3.6.1.4.1.1466.115.121.1.58",
        "Substring Assertion",
        Syntax::Other,
    ),
    ("1.3.6.1.1.16.1", "UUID", Syntax::Uuid),
];

/// A matching rule the server implements (RFC 4517 section 4.2, RFC 4530).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Case-insensitive string comparison with insignificant spaces removed.
    CaseIgnore,
    /// Case-sensitive string comparison with insignificant spaces removed.
    CaseExact,
    /// Telephone numbers: spaces and hyphens are insignificant.
    Telephone,
    /// Numeric strings: spaces are insignificant.
    Numeric,
    /// Integers compared by value.
    Integer,
    /// TRUE / FALSE.
    Boolean,
    /// DNs compared after normalisation.
    DistinguishedName,
    /// OIDs and descriptors, case-insensitive, names resolved to OIDs where known.
    ObjectIdentifier,
    /// Byte-wise comparison.
    OctetString,
    /// Generalized times compared as instants in UTC.
    GeneralizedTime,
    /// UUIDs, case-insensitive.
    Uuid,
}

/// The matching rules published in `cn=Subschema`: (OID, name, syntax OID, rule, kind).
pub const MATCHING_RULES: &[(&str, &str, &str, Rule, RuleKind)] = &[
    (
        "2.5.13.0",
        "objectIdentifierMatch",
        "1.3.6.1.4.1.1466.115.121.1.38",
        Rule::ObjectIdentifier,
        RuleKind::Equality,
    ),
    (
        "2.5.13.1",
        "distinguishedNameMatch",
        "1.3.6.1.4.1.1466.115.121.1.12",
        Rule::DistinguishedName,
        RuleKind::Equality,
    ),
    (
        "2.5.13.2",
        "caseIgnoreMatch",
        "1.3.6.1.4.1.1466.115.121.1.15",
        Rule::CaseIgnore,
        RuleKind::Equality,
    ),
    (
        "2.5.13.3",
        "caseIgnoreOrderingMatch",
        "1.3.6.1.4.1.1466.115.121.1.15",
        Rule::CaseIgnore,
        RuleKind::Ordering,
    ),
    (
        "2.5.13.4",
        "caseIgnoreSubstringsMatch",
        "1.3.6.1.4.1.1466.115.121.1.58",
        Rule::CaseIgnore,
        RuleKind::Substring,
    ),
    (
        "2.5.13.5",
        "caseExactMatch",
        "1.3.6.1.4.1.1466.115.121.1.15",
        Rule::CaseExact,
        RuleKind::Equality,
    ),
    (
        "2.5.13.6",
        "caseExactOrderingMatch",
        "1.3.6.1.4.1.1466.115.121.1.15",
        Rule::CaseExact,
        RuleKind::Ordering,
    ),
    (
        "2.5.13.7",
        "caseExactSubstringsMatch",
        "1.3.6.1.4.1.1466.115.121.1.58",
        Rule::CaseExact,
        RuleKind::Substring,
    ),
    (
        "2.5.13.8",
        "numericStringMatch",
        "1.3.6.1.4.1.1466.115.121.1.36",
        Rule::Numeric,
        RuleKind::Equality,
    ),
    (
        "2.5.13.9",
        "numericStringOrderingMatch",
        "1.3.6.1.4.1.1466.115.121.1.36",
        Rule::Numeric,
        RuleKind::Ordering,
    ),
    (
        "2.5.13.10",
        "numericStringSubstringsMatch",
        "1.3.6.1.4.1.1466.115.121.1.58",
        Rule::Numeric,
        RuleKind::Substring,
    ),
    (
        "2.5.13.11",
        "caseIgnoreListMatch",
        "1.3.6.1.4.1.1466.115.121.1.41",
        Rule::CaseIgnore,
        RuleKind::Equality,
    ),
    (
        "2.5.13.12",
        "caseIgnoreListSubstringsMatch",
        "1.3.6.1.4.1.1466.115.121.1.58",
        Rule::CaseIgnore,
        RuleKind::Substring,
    ),
    (
        "2.5.13.13",
        "booleanMatch",
        "1.3.6.1.4.1.1466.115.121.1.7",
        Rule::Boolean,
        RuleKind::Equality,
    ),
    (
        "2.5.13.14",
        "integerMatch",
        "1.3.6.1.4.1.1466.115.121.1.27",
        Rule::Integer,
        RuleKind::Equality,
    ),
    (
        "2.5.13.15",
        "integerOrderingMatch",
        "1.3.6.1.4.1.1466.115.121.1.27",
        Rule::Integer,
        RuleKind::Ordering,
    ),
    (
        "2.5.13.16",
        "bitStringMatch",
        "1.3.6.1.4.1.1466.115.121.1.6",
        Rule::OctetString,
        RuleKind::Equality,
    ),
    (
        "2.5.13.17",
        "octetStringMatch",
        "1.3.6.1.4.1.1466.115.121.1.40",
        Rule::OctetString,
        RuleKind::Equality,
    ),
    (
        "2.5.13.18",
        "octetStringOrderingMatch",
        "1.3.6.1.4.1.1466.115.121.1.40",
        Rule::OctetString,
        RuleKind::Ordering,
    ),
    (
        "2.5.13.20",
        "telephoneNumberMatch",
        "1.3.6.1.4.1.1466.115.121.1.50",
        Rule::Telephone,
        RuleKind::Equality,
    ),
    (
        "2.5.13.21",
        "telephoneNumberSubstringsMatch",
        "1.3.6.1.4.1.1466.115.121.1.58",
        Rule::Telephone,
        RuleKind::Substring,
    ),
    (
        "2.5.13.22",
        "presentationAddressMatch",
        "1.3.6.1.4.1.1466.115.121.1.43",
        Rule::CaseIgnore,
        RuleKind::Equality,
    ),
    (
        "2.5.13.23",
        "uniqueMemberMatch",
        "1.3.6.1.4.1.1466.115.121.1.34",
        Rule::DistinguishedName,
        RuleKind::Equality,
    ),
    (
        "2.5.13.24",
        "protocolInformationMatch",
        "1.3.6.1.4.1.1466.115.121.1.42",
        Rule::CaseIgnore,
        RuleKind::Equality,
    ),
    (
        "2.5.13.27",
        "generalizedTimeMatch",
        "1.3.6.1.4.1.1466.115.121.1.24",
        Rule::GeneralizedTime,
        RuleKind::Equality,
    ),
    (
        "2.5.13.28",
        "generalizedTimeOrderingMatch",
        "1.3.6.1.4.1.1466.115.121.1.24",
        Rule::GeneralizedTime,
        RuleKind::Ordering,
    ),
    (
        "2.5.13.30",
        "objectIdentifierFirstComponentMatch",
        "1.3.6.1.4.1.1466.115.121.1.38",
        Rule::ObjectIdentifier,
        RuleKind::Equality,
    ),
    (
        "1.3.6.1.4.1.1466.109.114.1",
        "caseExactIA5Match",
        "1.3.6.1.4.1.1466.115.121.1.26",
        Rule::CaseExact,
        RuleKind::Equality,
    ),
    (
        "1.3.6.1.4.1.1466.109.114.2",
        "caseIgnoreIA5Match",
        "1.3.6.1.4.1.1466.115.121.1.26",
        Rule::CaseIgnore,
        RuleKind::Equality,
    ),
    (
        "1.3.6.1.4.1.1466.109.114.3",
        "caseIgnoreIA5SubstringsMatch",
        "1.3.6.1.4.1.1466.115.121.1.58",
        Rule::CaseIgnore,
        RuleKind::Substring,
    ),
    (
        "1.3.6.1.4.1.4203.1.2.1",
        "caseExactIA5SubstringsMatch",
        "1.3.6.1.4.1.1466.115.121.1.58",
        Rule::CaseExact,
        RuleKind::Substring,
    ),
    (
        "1.3.6.1.1.16.2",
        "uuidMatch",
        "1.3.6.1.1.16.1",
        Rule::Uuid,
        RuleKind::Equality,
    ),
    (
        "1.3.6.1.1.16.3",
        "uuidOrderingMatch",
        "1.3.6.1.1.16.1",
        Rule::Uuid,
        RuleKind::Ordering,
    ),
];

/// What a matching rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// Equality (and approximate) assertions.
    Equality,
    /// `>=` and `<=` assertions.
    Ordering,
    /// Substring assertions.
    Substring,
}

/// How an attribute is used (RFC 4512 section 4.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A user attribute.
    UserApplications,
    /// An operational attribute kept by the directory.
    DirectoryOperation,
    /// An operational attribute shared between DSAs.
    DistributedOperation,
    /// An operational attribute local to this DSA.
    DsaOperation,
}

/// An attribute type definition with its `SUP` inheritance resolved.
#[derive(Debug, Clone)]
pub struct AttributeType {
    /// The numeric OID.
    pub oid: String,
    /// The names; the first is the canonical one.
    pub names: Vec<String>,
    /// The superior type's name, if any.
    pub sup: Option<String>,
    /// The equality rule (own or inherited).
    pub equality: Option<Rule>,
    /// The ordering rule (own or inherited).
    pub ordering: Option<Rule>,
    /// The substring rule (own or inherited).
    pub substr: Option<Rule>,
    /// The syntax OID (own or inherited).
    pub syntax_oid: String,
    /// The syntax checker.
    pub syntax: Syntax,
    /// At most one value.
    pub single_value: bool,
    /// Clients may not change it.
    pub no_user_modification: bool,
    /// Operational or user.
    pub usage: Usage,
    /// The definition as read from the schema file, on one line.
    pub definition: String,
    equality_name: Option<String>,
    ordering_name: Option<String>,
    substr_name: Option<String>,
}

impl AttributeType {
    /// The canonical name (the first NAME, or the OID when there is none).
    pub fn name(&self) -> &str {
        self.names.first().map(String::as_str).unwrap_or(&self.oid)
    }

    /// The names of the equality, ordering and substring rules (own or inherited).
    pub fn rule_names(&self) -> [Option<&str>; 3] {
        [
            self.equality_name.as_deref(),
            self.ordering_name.as_deref(),
            self.substr_name.as_deref(),
        ]
    }

    /// True for operational attributes (returned only when asked for, or with `+`).
    pub fn is_operational(&self) -> bool {
        self.usage != Usage::UserApplications
    }
}

/// The kind of an object class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassKind {
    /// Abstract (like `top`).
    Abstract,
    /// Structural: exactly one chain per entry.
    Structural,
    /// Auxiliary: added beside the structural class.
    Auxiliary,
}

/// An object class definition.
#[derive(Debug, Clone)]
pub struct ObjectClass {
    /// The numeric OID.
    pub oid: String,
    /// The names; the first is the canonical one.
    pub names: Vec<String>,
    /// Superior classes.
    pub sup: Vec<String>,
    /// Abstract, structural or auxiliary.
    pub kind: ClassKind,
    /// Required attributes (own only).
    pub must: Vec<String>,
    /// Allowed attributes (own only).
    pub may: Vec<String>,
    /// The definition as read, on one line.
    pub definition: String,
}

impl ObjectClass {
    /// The canonical name.
    pub fn name(&self) -> &str {
        self.names.first().map(String::as_str).unwrap_or(&self.oid)
    }
}

/// A problem with a schema file.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A definition could not be parsed or resolved.
    #[error("{0}")]
    Definition(String),
}

/// Why an entry or a value breaks the schema; each maps to one LDAP result code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Violation {
    /// The attribute type is not defined (undefinedAttributeType, 17).
    #[error("attribute type {0} is not defined")]
    UndefinedAttribute(String),
    /// The value does not match the syntax (invalidAttributeSyntax, 21).
    #[error("{0}: value is not valid for its syntax")]
    InvalidSyntax(String),
    /// Object class rules broken (objectClassViolation, 65).
    #[error("{0}")]
    ObjectClass(String),
    /// Single-value, duplicate value or similar constraint (constraintViolation, 19).
    #[error("{0}")]
    Constraint(String),
    /// The entry may not be changed this way (e.g. NO-USER-MODIFICATION; constraintViolation, 19).
    #[error("{0}")]
    NoUserModification(String),
    /// The DN is not valid (invalidDNSyntax, 34).
    #[error("{0}")]
    InvalidDn(String),
    /// The RDN attribute is missing from the entry or otherwise wrong (namingViolation, 64).
    #[error("{0}")]
    Naming(String),
    /// A filter or assertion names a rule the attribute lacks (inappropriateMatching, 18).
    #[error("{0}")]
    InappropriateMatching(String),
}

/// The whole schema, resolved.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    attrs: Vec<AttributeType>,
    classes: Vec<ObjectClass>,
    /// Per class (same order as `classes`): what it and its superclasses require and
    /// allow, resolved once.
    class_attrs: Vec<ClassAttrs>,
    attr_by_name: NameMap,
    class_by_name: NameMap,
}

/// The attribute types a class and its superclasses require and allow, as indexes
/// into the schema's attribute types, sorted.
#[derive(Debug, Clone, Default)]
struct ClassAttrs {
    must: Vec<usize>,
    allowed: Vec<usize>,
}

/// Lower-cased names and OIDs to indexes. Looked up for every attribute of every entry a
/// search reads, so hashed with FNV-1a (the keys are short and come from the schema
/// files, not from clients) rather than the default SipHash.
type NameMap = HashMap<String, usize, std::hash::BuildHasherDefault<Fnv>>;

/// The 64-bit FNV-1a hash.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Schema {
    /// Load every `*.schema` file of a directory, in name order, and resolve them.
    pub fn load_dir(dir: &Path) -> Result<Schema, SchemaError> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|source| SchemaError::Io {
                path: dir.display().to_string(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "schema"))
            .collect();
        paths.sort();
        let mut texts = Vec::new();
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(|source| SchemaError::Io {
                path: p.display().to_string(),
                source,
            })?;
            texts.push((p.display().to_string(), text));
        }
        Schema::from_texts(texts.iter().map(|(n, t)| (n.as_str(), t.as_str())))
    }

    /// The schema shipped with PigeonAir, compiled into the binary.
    pub fn builtin() -> Schema {
        Schema::from_texts(BUILTIN_SCHEMA.iter().copied())
            .expect("the built-in schema files resolve")
    }

    /// Parse and resolve schema texts given as (file name, content).
    pub fn from_texts<'a>(
        texts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Schema, SchemaError> {
        let mut schema = Schema::default();
        for (file, text) in texts {
            for (line, def) in split_definitions(text) {
                let ctx = |e: String| SchemaError::Definition(format!("{file}:{line}: {e}"));
                let (keyword, body) = def.split_once(char::is_whitespace).unwrap_or((&def, ""));
                match keyword.to_ascii_lowercase().as_str() {
                    "attributetype" | "attributetypes" => schema
                        .add_attr(parse_attr(body.trim()).map_err(ctx)?)
                        .map_err(ctx)?,
                    "objectclass" | "objectclasses" => schema
                        .add_class(parse_class(body.trim()).map_err(ctx)?)
                        .map_err(ctx)?,
                    other => return Err(ctx(format!("unknown keyword {other:?}"))),
                }
            }
        }
        schema.resolve()?;
        Ok(schema)
    }

    fn add_attr(&mut self, at: AttributeType) -> Result<(), String> {
        let idx = self.attrs.len();
        for key in at
            .names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .chain([at.oid.clone()])
        {
            if self.attr_by_name.insert(key.clone(), idx).is_some() {
                return Err(format!("attribute type {key} defined twice"));
            }
        }
        self.attrs.push(at);
        Ok(())
    }

    fn add_class(&mut self, oc: ObjectClass) -> Result<(), String> {
        let idx = self.classes.len();
        for key in oc
            .names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .chain([oc.oid.clone()])
        {
            if self.class_by_name.insert(key.clone(), idx).is_some() {
                return Err(format!("object class {key} defined twice"));
            }
        }
        self.classes.push(oc);
        Ok(())
    }

    fn resolve(&mut self) -> Result<(), SchemaError> {
        // Inherit rules and syntax down SUP chains (bounded, so a cycle is an error).
        for i in 0..self.attrs.len() {
            let mut eq = self.attrs[i].equality_name.clone();
            let mut ord = self.attrs[i].ordering_name.clone();
            let mut sub = self.attrs[i].substr_name.clone();
            let mut syn =
                (!self.attrs[i].syntax_oid.is_empty()).then(|| self.attrs[i].syntax_oid.clone());
            let mut sup = self.attrs[i].sup.clone();
            let mut depth = 0;
            while let Some(s) = sup {
                depth += 1;
                let j = *self
                    .attr_by_name
                    .get(&s.to_ascii_lowercase())
                    .ok_or_else(|| {
                        SchemaError::Definition(format!(
                            "{}: SUP {s} is not defined",
                            self.attrs[i].name()
                        ))
                    })?;
                if depth > 32 {
                    return Err(SchemaError::Definition(format!(
                        "{}: SUP cycle",
                        self.attrs[i].name()
                    )));
                }
                let p = &self.attrs[j];
                eq = eq.or_else(|| p.equality_name.clone());
                ord = ord.or_else(|| p.ordering_name.clone());
                sub = sub.or_else(|| p.substr_name.clone());
                syn = syn.or_else(|| (!p.syntax_oid.is_empty()).then(|| p.syntax_oid.clone()));
                sup = p.sup.clone();
            }
            let name = self.attrs[i].name().to_string();
            let rule = |n: &Option<String>| -> Result<Option<Rule>, SchemaError> {
                match n {
                    None => Ok(None),
                    Some(n) => rule_by_name(n).map(|(r, _)| Some(r)).ok_or_else(|| {
                        SchemaError::Definition(format!("{name}: unknown matching rule {n}"))
                    }),
                }
            };
            let syntax_oid =
                syn.ok_or_else(|| SchemaError::Definition(format!("{name}: no SYNTAX")))?;
            let at = &mut self.attrs[i];
            at.equality_name = eq.clone();
            at.ordering_name = ord.clone();
            at.substr_name = sub.clone();
            at.equality = rule(&eq)?;
            at.ordering = rule(&ord)?;
            at.substr = rule(&sub)?;
            at.syntax = SYNTAXES
                .iter()
                .find(|s| s.0 == syntax_oid)
                .map(|s| s.2)
                .unwrap_or(Syntax::Other);
            at.syntax_oid = syntax_oid;
        }
        for oc in &self.classes {
            for s in &oc.sup {
                if !self.class_by_name.contains_key(&s.to_ascii_lowercase()) {
                    return Err(SchemaError::Definition(format!(
                        "{}: SUP {s} is not defined",
                        oc.name()
                    )));
                }
            }
            for a in oc.must.iter().chain(&oc.may) {
                if !self.attr_by_name.contains_key(&a.to_ascii_lowercase()) {
                    return Err(SchemaError::Definition(format!(
                        "{}: attribute {a} is not defined",
                        oc.name()
                    )));
                }
            }
        }
        let index = |a: &String| lookup_folded(&self.attr_by_name, a);
        self.class_attrs = self
            .classes
            .iter()
            .map(|oc| {
                let chain = self.class_chain(oc);
                let mut must: Vec<usize> = chain
                    .iter()
                    .flat_map(|c| c.must.iter().filter_map(index))
                    .collect();
                let mut allowed: Vec<usize> = chain
                    .iter()
                    .flat_map(|c| c.must.iter().chain(&c.may).filter_map(index))
                    .collect();
                must.sort_unstable();
                must.dedup();
                allowed.sort_unstable();
                allowed.dedup();
                ClassAttrs { must, allowed }
            })
            .collect();
        Ok(())
    }

    /// Look up an attribute type by name or OID (case-insensitive). Options such as
    /// `;binary` are ignored.
    pub fn attr(&self, name: &str) -> Option<&AttributeType> {
        let base = name.split(';').next().unwrap_or(name);
        lookup_folded(&self.attr_by_name, base).map(|i| &self.attrs[i])
    }

    /// Look up an object class by name or OID (case-insensitive).
    pub fn class(&self, name: &str) -> Option<&ObjectClass> {
        lookup_folded(&self.class_by_name, name).map(|i| &self.classes[i])
    }

    /// Every attribute type, in definition order.
    pub fn attribute_types(&self) -> &[AttributeType] {
        &self.attrs
    }

    /// Every object class, in definition order.
    pub fn object_classes(&self) -> &[ObjectClass] {
        &self.classes
    }

    /// True when `attr` is `ancestor` or a subtype of it.
    pub fn is_subtype(&self, attr: &AttributeType, ancestor: &AttributeType) -> bool {
        self.is_subtype_of(attr, &ancestor.oid)
    }

    /// True when `attr` is the type with numeric OID `ancestor_oid` or a subtype of it.
    pub fn is_subtype_of(&self, attr: &AttributeType, ancestor_oid: &str) -> bool {
        let mut cur = Some(attr);
        for _ in 0..32 {
            match cur {
                Some(a) if a.oid == ancestor_oid => return true,
                Some(a) => cur = a.sup.as_deref().and_then(|s| self.attr(s)),
                None => return false,
            }
        }
        false
    }

    /// The class and all its superiors, nearest first.
    pub fn class_chain<'s>(&'s self, oc: &'s ObjectClass) -> Vec<&'s ObjectClass> {
        let mut out: Vec<&ObjectClass> = Vec::new();
        let mut todo = vec![oc];
        while let Some(c) = todo.pop() {
            if out.iter().any(|o| o.oid == c.oid) || out.len() > 64 {
                continue;
            }
            out.push(c);
            todo.extend(c.sup.iter().filter_map(|s| self.class(s)));
        }
        out
    }

    /// Check a value against the attribute's syntax.
    pub fn check_syntax(&self, at: &AttributeType, value: &[u8]) -> Result<(), Violation> {
        if valid_for_syntax(at.syntax, value) {
            Ok(())
        } else {
            Err(Violation::InvalidSyntax(at.name().to_string()))
        }
    }

    /// The value in the form its equality rule compares (`None` when the attribute has
    /// no equality rule or the value cannot be normalised).
    pub fn normalize(&self, at: &AttributeType, value: &[u8]) -> Option<Vec<u8>> {
        let rule = at.equality?;
        self.normalize_by(rule, value)
    }

    /// Normalise a value by a given rule.
    pub fn normalize_by(&self, rule: Rule, value: &[u8]) -> Option<Vec<u8>> {
        match rule {
            Rule::CaseIgnore => {
                Some(fold_spaces(&String::from_utf8_lossy(value).to_lowercase(), true).into_bytes())
            }
            Rule::CaseExact => {
                Some(fold_spaces(&String::from_utf8_lossy(value), true).into_bytes())
            }
            Rule::Telephone => Some(
                String::from_utf8_lossy(value)
                    .chars()
                    .filter(|c| *c != ' ' && *c != '-')
                    .flat_map(char::to_lowercase)
                    .collect::<String>()
                    .into_bytes(),
            ),
            Rule::Numeric => Some(value.iter().copied().filter(|c| *c != b' ').collect()),
            Rule::Integer => normalize_integer(value).map(String::into_bytes),
            Rule::Boolean => {
                let s = std::str::from_utf8(value).ok()?;
                Some(s.trim().to_ascii_uppercase().into_bytes())
            }
            Rule::DistinguishedName => {
                let s = std::str::from_utf8(value).ok()?;
                // uniqueMember may carry an optional #'...'B UID suffix.
                let dn = Dn::parse(s).ok()?;
                Some(self.normalize_dn(&dn).ok()?.to_string().into_bytes())
            }
            Rule::ObjectIdentifier => {
                let s = std::str::from_utf8(value).ok()?.trim().to_ascii_lowercase();
                // Descriptors of known classes and attributes compare by OID.
                if let Some(oc) = self.class(&s) {
                    return Some(oc.oid.clone().into_bytes());
                }
                if let Some(at) = self.attr(&s) {
                    return Some(at.oid.clone().into_bytes());
                }
                Some(s.into_bytes())
            }
            Rule::OctetString => Some(value.to_vec()),
            Rule::GeneralizedTime => {
                let s = std::str::from_utf8(value).ok()?;
                parse_generalized_time(s).map(|t| t.canonical().into_bytes())
            }
            Rule::Uuid => Some(value.to_ascii_lowercase()),
        }
    }

    /// Normalise a substring assertion component (same folding as the rule, but
    /// leading and trailing spaces of the component are kept as single spaces).
    pub fn normalize_substring(&self, rule: Rule, value: &[u8]) -> Vec<u8> {
        match rule {
            Rule::CaseIgnore => {
                fold_spaces(&String::from_utf8_lossy(value).to_lowercase(), false).into_bytes()
            }
            Rule::CaseExact => fold_spaces(&String::from_utf8_lossy(value), false).into_bytes(),
            _ => self
                .normalize_by(rule, value)
                .unwrap_or_else(|| value.to_vec()),
        }
    }

    /// Compare two values by the attribute's ordering rule.
    pub fn order(&self, rule: Rule, a: &[u8], b: &[u8]) -> Option<Ordering> {
        match rule {
            Rule::Integer => {
                let (a, b) = (normalize_integer(a)?, normalize_integer(b)?);
                Some(compare_integers(&a, &b))
            }
            Rule::GeneralizedTime => {
                let a = parse_generalized_time(std::str::from_utf8(a).ok()?)?;
                let b = parse_generalized_time(std::str::from_utf8(b).ok()?)?;
                Some(a.cmp(&b))
            }
            other => Some(
                self.normalize_by(other, a)?
                    .cmp(&self.normalize_by(other, b)?),
            ),
        }
    }

    /// Normalise a DN: attribute names to canonical lower-case names, values by their
    /// equality rules, multi-valued RDNs sorted. Unknown attributes are an error.
    pub fn normalize_dn(&self, dn: &Dn) -> Result<Dn, Violation> {
        let mut rdns = Vec::with_capacity(dn.rdns.len());
        for rdn in &dn.rdns {
            let mut avas = Vec::with_capacity(rdn.0.len());
            for ava in &rdn.0 {
                let at = self.attr(&ava.attr).ok_or_else(|| {
                    Violation::InvalidDn(format!("attribute type {} is not defined", ava.attr))
                })?;
                let value = match at.equality {
                    Some(rule) => self.normalize_by(rule, &ava.value).ok_or_else(|| {
                        Violation::InvalidDn(format!("{}: invalid value in DN", at.name()))
                    })?,
                    None => ava.value.clone(),
                };
                avas.push(Ava {
                    attr: at.name().to_ascii_lowercase(),
                    value,
                });
            }
            avas.sort_by(|a, b| (&a.attr, &a.value).cmp(&(&b.attr, &b.value)));
            avas.dedup();
            rdns.push(Rdn(avas));
        }
        Ok(Dn { rdns })
    }

    /// The storage key of a normalised DN: RDNs root first, each followed by a NUL byte,
    /// so a subtree is a key prefix. The root DSE's key is empty.
    pub fn dn_key(&self, dn: &Dn) -> Result<String, Violation> {
        let norm = self.normalize_dn(dn)?;
        Ok(key_of_normalized(&norm))
    }

    /// Every attribute type an object class set requires and allows, with their
    /// superclasses' (resolved when the schema was loaded).
    pub fn allowed<'s>(&'s self, classes: &[&ObjectClass]) -> Allowed<'s> {
        let classes: Vec<usize> = classes
            .iter()
            .filter_map(|c| lookup_folded(&self.class_by_name, &c.oid))
            .collect();
        let mut must: Vec<usize> = classes
            .iter()
            .flat_map(|&c| self.class_attrs[c].must.iter().copied())
            .collect();
        must.sort_unstable();
        must.dedup();
        Allowed {
            schema: self,
            must: must.into_iter().map(|i| &self.attrs[i]).collect(),
            classes,
        }
    }
}

/// What a set of object classes requires and allows ([`Schema::allowed`]).
pub struct Allowed<'s> {
    schema: &'s Schema,
    /// The required attribute types.
    pub must: Vec<&'s AttributeType>,
    /// The classes, as indexes into the schema's.
    classes: Vec<usize>,
}

impl Allowed<'_> {
    /// Whether the classes require or allow `at`.
    pub fn allows(&self, at: &AttributeType) -> bool {
        let Some(i) = lookup_folded(&self.schema.attr_by_name, &at.oid) else {
            return false;
        };
        self.classes
            .iter()
            .any(|&c| self.schema.class_attrs[c].allowed.binary_search(&i).is_ok())
    }
}

/// The key of a DN that is already normalised.
pub fn key_of_normalized(norm: &Dn) -> String {
    let mut key = String::new();
    for rdn in norm.rdns.iter().rev() {
        key.push_str(&rdn.to_string());
        key.push('\0');
    }
    key
}

/// The schema files that ship with PigeonAir (also the default `schema/` directory).
pub const BUILTIN_SCHEMA: &[(&str, &str)] = &[
    ("system.schema", include_str!("../../schema/system.schema")),
    ("core.schema", include_str!("../../schema/core.schema")),
    ("cosine.schema", include_str!("../../schema/cosine.schema")),
    (
        "inetorgperson.schema",
        include_str!("../../schema/inetorgperson.schema"),
    ),
    ("nis.schema", include_str!("../../schema/nis.schema")),
    ("mail.schema", include_str!("../../schema/mail.schema")),
    (
        "pigeonair.schema",
        include_str!("../../schema/pigeonair.schema"),
    ),
];

/// A rule by name or OID.
pub fn rule_by_name(name: &str) -> Option<(Rule, RuleKind)> {
    MATCHING_RULES
        .iter()
        .find(|r| r.0 == name || r.1.eq_ignore_ascii_case(name))
        .map(|r| (r.3, r.4))
}

fn fold_spaces(s: &str, trim: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for ch in s.chars() {
        if ch.is_whitespace() {
            space = true;
        } else {
            if space && (!out.is_empty() || !trim) {
                out.push(' ');
            }
            space = false;
            out.push(ch);
        }
    }
    if space && !trim {
        out.push(' ');
    }
    out
}

fn normalize_integer(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    Some(match (neg, digits.is_empty()) {
        (_, true) => "0".to_string(),
        (true, false) => format!("-{digits}"),
        (false, false) => digits.to_string(),
    })
}

fn compare_integers(a: &str, b: &str) -> Ordering {
    let (an, ad) = a.strip_prefix('-').map_or((false, a), |d| (true, d));
    let (bn, bd) = b.strip_prefix('-').map_or((false, b), |d| (true, d));
    match (an, bn) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (neg, _) => {
            let mag = ad.len().cmp(&bd.len()).then_with(|| ad.cmp(bd));
            if neg {
                mag.reverse()
            } else {
                mag
            }
        }
    }
}

/// An instant parsed from a Generalized Time value, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GeneralizedTime {
    /// Seconds since 0000-03-01 (a proleptic Gregorian day count times 86400).
    pub seconds: i64,
    /// Fraction of a second in nanoseconds.
    pub nanos: u32,
}

impl GeneralizedTime {
    /// `YYYYMMDDHHMMSS[.f]Z`.
    pub fn canonical(&self) -> String {
        let days = self.seconds.div_euclid(86400);
        let rem = self.seconds.rem_euclid(86400);
        let (y, m, d) = civil_from_days(days);
        let mut s = format!(
            "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        if self.nanos > 0 {
            let f = format!("{:09}", self.nanos);
            s.push('.');
            s.push_str(f.trim_end_matches('0'));
        }
        s.push('Z');
        s
    }

    /// From seconds since the Unix epoch.
    pub fn from_unix(secs: i64, nanos: u32) -> GeneralizedTime {
        GeneralizedTime {
            seconds: secs + days_from_civil(1970, 1, 1) * 86400,
            nanos,
        }
    }
}

// Howard Hinnant's civil calendar algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parse RFC 4517 Generalized Time: `YYYYMMDDHH[MM[SS]][(.|,)fraction](Z|(+|-)HH[MM])`.
pub fn parse_generalized_time(s: &str) -> Option<GeneralizedTime> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |a, &c| a * 10 + (c - b'0') as i64))
    };
    let year = num(0, 4)?;
    let month = num(4, 2)?;
    let day = num(6, 2)?;
    let hour = num(8, 2)?;
    let mut i = 10;
    let (mut minute, mut second) = (0, 0);
    if let Some(m) = num(i, 2) {
        minute = m;
        i += 2;
        if let Some(s) = num(i, 2) {
            second = s;
            i += 2;
        }
    }
    let mut nanos = 0u32;
    if matches!(b.get(i), Some(b'.') | Some(b',')) {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 9)];
        nanos = format!("{frac:0<9}").parse().ok()?;
    }
    let offset = match b.get(i)? {
        b'Z' => {
            i += 1;
            0
        }
        c @ (b'+' | b'-') => {
            let h = num(i + 1, 2)?;
            let m = if b.len() >= i + 5 { num(i + 3, 2)? } else { 0 };
            let len = if b.len() >= i + 5 { 5 } else { 3 };
            i += len;
            let off = h * 3600 + m * 60;
            if *c == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    if i != b.len()
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(GeneralizedTime {
        seconds: days * 86400 + hour * 3600 + minute * 60 + second - offset,
        nanos,
    })
}

fn is_printable(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b" '()+,-./:?=".contains(&c)
}

fn is_oid(s: &str) -> bool {
    let numeric = s
        .split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    let descr = s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
    numeric || descr
}

/// Whether a value is valid for a syntax.
pub fn valid_for_syntax(syntax: Syntax, v: &[u8]) -> bool {
    let text = std::str::from_utf8(v);
    match syntax {
        Syntax::OctetString => true,
        Syntax::DirectoryString => text.is_ok() && !v.is_empty(),
        Syntax::Ia5String => v.is_ascii(),
        Syntax::Integer => {
            let s = text.unwrap_or("");
            let d = s.strip_prefix('-').unwrap_or(s);
            !d.is_empty()
                && d.bytes().all(|c| c.is_ascii_digit())
                && (d == "0" || !d.starts_with('0'))
                && s != "-0"
        }
        Syntax::Boolean => v == b"TRUE" || v == b"FALSE",
        Syntax::Dn => text.is_ok_and(|s| Dn::parse(s).is_ok()),
        Syntax::NameAndOptionalUid => {
            text.is_ok_and(|s| Dn::parse(s.split("#'").next().unwrap_or(s)).is_ok())
        }
        Syntax::Oid => text.is_ok_and(is_oid),
        Syntax::GeneralizedTime => text.is_ok_and(|s| parse_generalized_time(s).is_some()),
        Syntax::PrintableString => !v.is_empty() && v.iter().all(|&c| is_printable(c)),
        Syntax::NumericString => {
            !v.is_empty() && v.iter().all(|&c| c.is_ascii_digit() || c == b' ')
        }
        Syntax::TelephoneNumber => !v.is_empty() && v.iter().all(|&c| is_printable(c)),
        Syntax::CountryString => v.len() == 2 && v.iter().all(|&c| is_printable(c)),
        Syntax::BitString => {
            v.len() >= 3
                && v[0] == b'\''
                && v.ends_with(b"'B")
                && v[1..v.len() - 2].iter().all(|&c| c == b'0' || c == b'1')
        }
        Syntax::Uuid => {
            let s = text.unwrap_or("");
            s.len() == 36
                && s.char_indices().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                })
        }
        Syntax::Other => text.is_ok(),
    }
}

/// Split a schema text into definitions: (line number, text on one line).
fn split_definitions(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(trimmed);
                continue;
            }
        }
        out.push((n + 1, trimmed.to_string()));
    }
    out
}

/// Tokens of an RFC 4512 description: `(`, `)`, quoted strings, bare words.
fn tokenize(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '$' => {
                out.push(c.to_string());
                chars.next();
            }
            '\'' => {
                chars.next();
                let mut q = String::from("'");
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => q.push(ch),
                        None => return Err("unterminated quoted string".into()),
                    }
                }
                out.push(q);
            }
            _ => {
                let mut w = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || ch == '(' || ch == ')' || ch == '\'' || ch == '$' {
                        break;
                    }
                    w.push(ch);
                    chars.next();
                }
                out.push(w);
            }
        }
    }
    Ok(out)
}

/// The fields of a description: OID and a map of keyword to values.
struct Description {
    oid: String,
    fields: Vec<(String, Vec<String>)>,
}

impl Description {
    fn parse(s: &str) -> Result<Description, String> {
        let toks = tokenize(s)?;
        if toks.first().map(String::as_str) != Some("(")
            || toks.last().map(String::as_str) != Some(")")
        {
            return Err("a description is enclosed in parentheses".into());
        }
        let toks = &toks[1..toks.len() - 1];
        let oid = toks.first().ok_or("missing OID")?.clone();
        if !oid
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        {
            return Err(format!("bad OID {oid}"));
        }
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        let mut i = 1;
        while i < toks.len() {
            let kw = toks[i].to_ascii_uppercase();
            i += 1;
            let mut vals = Vec::new();
            let takes_value = !matches!(
                kw.as_str(),
                "SINGLE-VALUE"
                    | "COLLECTIVE"
                    | "NO-USER-MODIFICATION"
                    | "OBSOLETE"
                    | "ABSTRACT"
                    | "STRUCTURAL"
                    | "AUXILIARY"
            );
            if takes_value {
                match toks.get(i).map(String::as_str) {
                    Some("(") => {
                        i += 1;
                        while i < toks.len() && toks[i] != ")" {
                            if toks[i] != "$" {
                                vals.push(toks[i].trim_start_matches('\'').to_string());
                            }
                            i += 1;
                        }
                        i += 1;
                    }
                    Some(v) => {
                        vals.push(v.trim_start_matches('\'').to_string());
                        i += 1;
                    }
                    None => return Err(format!("{kw} needs a value")),
                }
            }
            fields.push((kw, vals));
        }
        Ok(Description { oid, fields })
    }

    fn get(&self, kw: &str) -> Option<&Vec<String>> {
        self.fields.iter().find(|f| f.0 == kw).map(|f| &f.1)
    }

    fn has(&self, kw: &str) -> bool {
        self.get(kw).is_some()
    }

    fn one(&self, kw: &str) -> Option<String> {
        self.get(kw).and_then(|v| v.first().cloned())
    }
}

fn parse_attr(body: &str) -> Result<AttributeType, String> {
    let d = Description::parse(body)?;
    let usage = match d.one("USAGE").as_deref() {
        None | Some("userApplications") => Usage::UserApplications,
        Some("directoryOperation") => Usage::DirectoryOperation,
        Some("distributedOperation") => Usage::DistributedOperation,
        Some("dSAOperation") => Usage::DsaOperation,
        Some(other) => return Err(format!("unknown USAGE {other}")),
    };
    let syntax_oid = d
        .one("SYNTAX")
        .map(|s| s.split('{').next().unwrap_or(&s).to_string())
        .unwrap_or_default();
    Ok(AttributeType {
        oid: d.oid.clone(),
        names: d.get("NAME").cloned().unwrap_or_default(),
        sup: d.one("SUP"),
        equality: None,
        ordering: None,
        substr: None,
        syntax: Syntax::Other,
        syntax_oid,
        single_value: d.has("SINGLE-VALUE"),
        no_user_modification: d.has("NO-USER-MODIFICATION"),
        usage,
        definition: body.to_string(),
        equality_name: d.one("EQUALITY"),
        ordering_name: d.one("ORDERING"),
        substr_name: d.one("SUBSTR"),
    })
}

fn parse_class(body: &str) -> Result<ObjectClass, String> {
    let d = Description::parse(body)?;
    let kind = if d.has("ABSTRACT") {
        ClassKind::Abstract
    } else if d.has("AUXILIARY") {
        ClassKind::Auxiliary
    } else {
        ClassKind::Structural
    };
    Ok(ObjectClass {
        oid: d.oid.clone(),
        names: d.get("NAME").cloned().unwrap_or_default(),
        sup: d.get("SUP").cloned().unwrap_or_default(),
        kind,
        must: d.get("MUST").cloned().unwrap_or_default(),
        may: d.get("MAY").cloned().unwrap_or_default(),
        definition: body.to_string(),
    })
}

/// Look up a lower-cased name without allocating for the common short names (this runs
/// for every attribute of every entry a search touches).
fn lookup_folded(map: &NameMap, name: &str) -> Option<usize> {
    let mut buf = [0u8; 64];
    if name.len() <= buf.len() {
        let folded = &mut buf[..name.len()];
        folded.copy_from_slice(name.as_bytes());
        folded.make_ascii_lowercase();
        // ASCII lower-casing keeps valid UTF-8 valid.
        let key = std::str::from_utf8(folded).ok()?;
        return map.get(key).copied();
    }
    map.get(&name.to_ascii_lowercase()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schema_resolves() {
        let s = Schema::builtin();
        let cn = s.attr("CN").unwrap();
        assert_eq!(cn.name(), "cn");
        assert_eq!(
            cn.equality,
            Some(Rule::CaseIgnore),
            "cn inherits caseIgnoreMatch from name"
        );
        assert_eq!(s.attr("2.5.4.3").unwrap().oid, "2.5.4.3");
        assert!(s.class("inetOrgPerson").is_some());
        assert!(s.attr("mailHost").is_some());
        assert!(s.attr("entryUUID").unwrap().is_operational());
    }

    #[test]
    fn normalizes_dns_by_rule() {
        let s = Schema::builtin();
        let a = s
            .dn_key(&Dn::parse("UID=Alice ,  OU=People,DC=Example,dc=ORG").unwrap())
            .unwrap();
        let b = s
            .dn_key(&Dn::parse("uid=alice,ou=people,dc=example,dc=org").unwrap())
            .unwrap();
        assert_eq!(a, b);
        let m1 = s.dn_key(&Dn::parse("cn=x+sn=y,dc=org").unwrap()).unwrap();
        let m2 = s.dn_key(&Dn::parse("SN=Y+cn=X,dc=org").unwrap()).unwrap();
        assert_eq!(m1, m2);
        assert!(s.dn_key(&Dn::parse("nosuchattr=x").unwrap()).is_err());
    }

    #[test]
    fn syntaxes() {
        assert!(valid_for_syntax(Syntax::Integer, b"-12"));
        assert!(!valid_for_syntax(Syntax::Integer, b"012"));
        assert!(!valid_for_syntax(Syntax::Integer, b"1x"));
        assert!(valid_for_syntax(Syntax::Boolean, b"TRUE"));
        assert!(!valid_for_syntax(Syntax::Boolean, b"yes"));
        assert!(valid_for_syntax(
            Syntax::GeneralizedTime,
            b"20261129210000Z"
        ));
        assert!(valid_for_syntax(
            Syntax::GeneralizedTime,
            b"2026112921+0100"
        ));
        assert!(!valid_for_syntax(
            Syntax::GeneralizedTime,
            b"20261329210000Z"
        ));
        assert!(!valid_for_syntax(Syntax::Ia5String, "é".as_bytes()));
        assert!(valid_for_syntax(Syntax::Oid, b"2.5.4.3"));
        assert!(valid_for_syntax(Syntax::Oid, b"inetOrgPerson"));
        assert!(!valid_for_syntax(Syntax::Oid, b"1..2"));
    }

    #[test]
    fn generalized_time_orders_across_offsets() {
        let a = parse_generalized_time("20260101120000Z").unwrap();
        let b = parse_generalized_time("20260101130000+0100").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), "20260101120000Z");
        assert_eq!(
            GeneralizedTime::from_unix(0, 0).canonical(),
            "19700101000000Z"
        );
    }

    #[test]
    fn integer_ordering() {
        let s = Schema::builtin();
        assert_eq!(s.order(Rule::Integer, b"-5", b"3"), Some(Ordering::Less));
        assert_eq!(s.order(Rule::Integer, b"10", b"9"), Some(Ordering::Greater));
        assert_eq!(s.order(Rule::Integer, b"-10", b"-9"), Some(Ordering::Less));
    }
}
