//! Conversion between our search filter model
//! ([`crate::directory::filter::Filter`]) and the protocol type
//! [`rasn_ldap::Filter`] of a SearchRequest.
//!
//! Note that rasn's BER encoder sorts the members of a `SET OF` by their
//! encodings, so the order of `&` / `|` members is not preserved across the
//! wire (it does not matter: both are commutative).

use crate::directory::filter::{Filter, FilterError, MAX_DEPTH};
use rasn::types::{OctetString, SetOf};
use rasn_ldap::{
    AttributeValueAssertion, Filter as WireFilter, LdapString, MatchingRuleAssertion,
    SubstringChoice, SubstringFilter,
};

fn protocol_error<T>(message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError {
        position: 0,
        message: message.into(),
    })
}

/// Wire filter to ours. A substrings filter with no parts, or with Initial not
/// first / Final not last / more than one of each, is a protocol error, as is
/// an extensible match with neither a matching rule nor a type (RFC 4511
/// section 4.5.1.7.7), a filter nested deeper than [`MAX_DEPTH`], or a filter
/// choice this version of the protocol does not know. Errors have position 0.
///
/// Attribute descriptions are taken as sent, without syntax checks: RFC 4511
/// makes an unrecognised attribute evaluate to Undefined, not an error.
pub fn from_wire(f: &WireFilter) -> Result<Filter, FilterError> {
    convert(f, 1)
}

fn convert(f: &WireFilter, depth: usize) -> Result<Filter, FilterError> {
    if depth > MAX_DEPTH {
        return protocol_error(format!("filter nested deeper than {MAX_DEPTH} levels"));
    }
    let list = |set: &SetOf<WireFilter>| -> Result<Vec<Filter>, FilterError> {
        set.iter().map(|c| convert(c, depth + 1)).collect()
    };
    let ava =
        |a: &AttributeValueAssertion| (a.attribute_desc.0.clone(), a.assertion_value.to_vec());
    Ok(match f {
        WireFilter::And(set) => Filter::And(list(set)?),
        WireFilter::Or(set) => Filter::Or(list(set)?),
        WireFilter::Not(inner) => Filter::Not(Box::new(convert(inner, depth + 1)?)),
        WireFilter::EqualityMatch(a) => {
            let (attr, value) = ava(a);
            Filter::Equality(attr, value)
        }
        WireFilter::GreaterOrEqual(a) => {
            let (attr, value) = ava(a);
            Filter::GreaterOrEqual(attr, value)
        }
        WireFilter::LessOrEqual(a) => {
            let (attr, value) = ava(a);
            Filter::LessOrEqual(attr, value)
        }
        WireFilter::ApproxMatch(a) => {
            let (attr, value) = ava(a);
            Filter::Approx(attr, value)
        }
        WireFilter::Present(attr) => Filter::Present(attr.0.clone()),
        WireFilter::Substrings(sf) => substrings(sf)?,
        WireFilter::ExtensibleMatch(m) => {
            if m.matching_rule.is_none() && m.r#type.is_none() {
                return protocol_error("extensible match without matching rule or type");
            }
            Filter::Extensible {
                rule: m.matching_rule.as_ref().map(|r| r.0.clone()),
                attr: m.r#type.as_ref().map(|t| t.0.clone()),
                value: m.match_value.to_vec(),
                dn_attributes: m.dn_attributes,
            }
        }
        #[allow(unreachable_patterns)]
        _ => return protocol_error("unknown filter choice"),
    })
}

fn substrings(sf: &SubstringFilter) -> Result<Filter, FilterError> {
    let parts = &sf.substrings;
    if parts.is_empty() {
        return protocol_error("substrings filter without substrings");
    }
    let last_index = parts.len() - 1;
    let mut initial = None;
    let mut any = Vec::new();
    let mut last = None;
    for (i, part) in parts.iter().enumerate() {
        match part {
            SubstringChoice::Initial(v) => {
                if i != 0 {
                    return protocol_error("substrings filter: initial is not first");
                }
                initial = Some(v.to_vec());
            }
            SubstringChoice::Any(v) => any.push(v.to_vec()),
            SubstringChoice::Final(v) => {
                if i != last_index {
                    return protocol_error("substrings filter: final is not last");
                }
                last = Some(v.to_vec());
            }
            #[allow(unreachable_patterns)]
            _ => return protocol_error("substrings filter: unknown substring choice"),
        }
    }
    Ok(Filter::Substrings {
        attr: sf.r#type.0.clone(),
        initial,
        any,
        last,
    })
}

/// Our filter to the wire type. Total: it does not validate, so a
/// [`Filter::Substrings`] with no parts gives an (invalid) empty substrings
/// sequence, and an [`Filter::Extensible`] without rule or type is sent as is.
pub fn to_wire(f: &Filter) -> WireFilter {
    let ava = |attr: &str, value: &[u8]| {
        AttributeValueAssertion::new(LdapString::from(attr), OctetString::from(value.to_vec()))
    };
    let list = |fs: &[Filter]| SetOf::from_vec(fs.iter().map(to_wire).collect());
    match f {
        Filter::And(fs) => WireFilter::And(list(fs)),
        Filter::Or(fs) => WireFilter::Or(list(fs)),
        Filter::Not(inner) => WireFilter::Not(Box::new(to_wire(inner))),
        Filter::Equality(a, v) => WireFilter::EqualityMatch(ava(a, v)),
        Filter::GreaterOrEqual(a, v) => WireFilter::GreaterOrEqual(ava(a, v)),
        Filter::LessOrEqual(a, v) => WireFilter::LessOrEqual(ava(a, v)),
        Filter::Approx(a, v) => WireFilter::ApproxMatch(ava(a, v)),
        Filter::Present(a) => WireFilter::Present(LdapString::from(a.as_str())),
        Filter::Substrings {
            attr,
            initial,
            any,
            last,
        } => {
            let mut parts = Vec::with_capacity(any.len() + 2);
            if let Some(i) = initial {
                parts.push(SubstringChoice::Initial(OctetString::from(i.clone())));
            }
            parts.extend(
                any.iter()
                    .map(|a| SubstringChoice::Any(OctetString::from(a.clone()))),
            );
            if let Some(l) = last {
                parts.push(SubstringChoice::Final(OctetString::from(l.clone())));
            }
            WireFilter::Substrings(SubstringFilter::new(LdapString::from(attr.as_str()), parts))
        }
        Filter::Extensible {
            rule,
            attr,
            value,
            dn_attributes,
        } => WireFilter::ExtensibleMatch(MatchingRuleAssertion::new(
            rule.as_deref().map(LdapString::from),
            attr.as_deref().map(LdapString::from),
            OctetString::from(value.clone()),
            *dn_attributes,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Filter {
        Filter::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn ber(w: &WireFilter) -> Vec<u8> {
        rasn::ber::encode(w).expect("encode")
    }

    fn unber(bytes: &[u8]) -> WireFilter {
        rasn::ber::decode::<WireFilter>(bytes).expect("decode")
    }

    /// Puts And/Or members in a canonical order (the encoder sorts them).
    fn canon(f: &Filter) -> Filter {
        match f {
            Filter::And(fs) | Filter::Or(fs) => {
                let mut v: Vec<Filter> = fs.iter().map(canon).collect();
                v.sort_by_key(|x| format!("{x:?}"));
                if matches!(f, Filter::And(_)) {
                    Filter::And(v)
                } else {
                    Filter::Or(v)
                }
            }
            Filter::Not(x) => Filter::Not(Box::new(canon(x))),
            other => other.clone(),
        }
    }

    const FILTERS: &[&str] = &[
        "(cn=Babs Jensen)",
        "(!(cn=Tim Howes))",
        "(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))",
        "(o=univ*of*mich*)",
        "(seeAlso=)",
        "(cn:caseExactMatch:=Fred Flintstone)",
        "(cn:=Betty Rubble)",
        "(sn:dn:2.4.6.8.10:=Barney Rubble)",
        "(o:dn:=Ace Industry)",
        "(:1.2.3:=Wilma Flintstone)",
        "(:DN:2.4.6.8.10:=Dino)",
        r"(o=Parens R Us \28for all your parenthetical needs\29)",
        r"(cn=*\2A*)",
        r"(filename=C:\5cMyFile)",
        r"(bin=\00\00\00\04)",
        r"(sn=Lu\c4\8di\c4\87)",
        r"(1.3.6.1.4.1.1466.0=\04\02\48\69)",
        "(&)",
        "(|)",
        "(cn=*)",
        "(cn=a**b)",
        "(cn=**)",
        "(mail=*@example.org)",
        "(age>=30)",
        "(age<=\\ff)",
        "(sn~=jensn)",
        "(&(objectClass=inetOrgPerson)(mail=a*@example.org)(!(|(uid=x)(cn;lang-en=*y*))))",
    ];

    #[test]
    fn filter_wire_round_trip() {
        for s in FILTERS {
            let ours = p(s);
            let wire = to_wire(&ours);
            assert_eq!(from_wire(&wire).unwrap(), ours, "{s}");
            let decoded = unber(&ber(&wire));
            assert_eq!(decoded, wire, "{s}");
            assert_eq!(canon(&from_wire(&decoded).unwrap()), canon(&ours), "{s}");
        }
    }

    #[test]
    fn filter_wire_known_encodings() {
        // (cn=x): [3] { OCTET STRING "cn", OCTET STRING "x" }
        assert_eq!(
            ber(&to_wire(&p("(cn=x)"))),
            [0xa3, 0x07, 0x04, 0x02, b'c', b'n', 0x04, 0x01, b'x']
        );
        // (cn=*): [7] "cn"
        assert_eq!(ber(&to_wire(&p("(cn=*)"))), [0x87, 0x02, b'c', b'n']);
        // (&): [0] {}
        assert_eq!(ber(&to_wire(&p("(&)"))), [0xa0, 0x00]);
        // (cn=a*b): [4] { "cn", SEQUENCE { [0] "a", [2] "b" } }
        assert_eq!(
            ber(&to_wire(&p("(cn=a*b)"))),
            [0xa4, 0x0c, 0x04, 0x02, b'c', b'n', 0x30, 0x06, 0x80, 0x01, b'a', 0x82, 0x01, b'b']
        );
        // (cn:dn:=x): [9] { [2] "cn", [3] "x", [4] TRUE }
        assert_eq!(
            ber(&to_wire(&p("(cn:dn:=x)"))),
            [0xa9, 0x0a, 0x82, 0x02, b'c', b'n', 0x83, 0x01, b'x', 0x84, 0x01, 0xff]
        );
    }

    #[test]
    fn filter_wire_rejects_bad_substrings() {
        let sub = |parts: Vec<SubstringChoice>| {
            WireFilter::Substrings(SubstringFilter::new("cn".into(), parts))
        };
        let v = |s: &str| OctetString::from(s.as_bytes().to_vec());
        let i = |s| SubstringChoice::Initial(v(s));
        let a = |s| SubstringChoice::Any(v(s));
        let f = |s| SubstringChoice::Final(v(s));
        for bad in [
            vec![],
            vec![a("x"), i("y")],
            vec![i("x"), i("y")],
            vec![f("x"), a("y")],
            vec![f("x"), f("y")],
            vec![i("x"), f("y"), f("z")],
        ] {
            assert!(from_wire(&sub(bad.clone())).is_err(), "{bad:?}");
            // Also when nested and after a BER round trip.
            let nested = WireFilter::Or(SetOf::from_vec(vec![sub(bad.clone())]));
            assert!(from_wire(&unber(&ber(&nested))).is_err(), "{bad:?}");
        }
        for good in [
            vec![i("x")],
            vec![a("x")],
            vec![f("x")],
            vec![i("x"), f("y")],
            vec![i("x"), a(""), a("z"), f("y")],
        ] {
            let ours = from_wire(&sub(good.clone())).unwrap();
            assert_eq!(to_wire(&ours), sub(good));
        }
        let no_rule_no_type = WireFilter::ExtensibleMatch(MatchingRuleAssertion::new(
            None,
            None,
            OctetString::from_static(b"x"),
            false,
        ));
        assert!(from_wire(&no_rule_no_type).is_err());
    }

    #[test]
    fn filter_wire_depth_limit() {
        let nest = |n: usize| {
            let mut w = WireFilter::Present("cn".into());
            for _ in 1..n {
                w = WireFilter::Not(Box::new(w));
            }
            w
        };
        let ok = nest(MAX_DEPTH);
        assert_eq!(from_wire(&ok).unwrap(), p(&to_wire_string(&ok)));
        assert!(from_wire(&nest(MAX_DEPTH + 1)).is_err());
        let mut w = WireFilter::And(SetOf::from_vec(vec![]));
        for _ in 0..MAX_DEPTH {
            w = WireFilter::Or(SetOf::from_vec(vec![w]));
        }
        assert!(from_wire(&w).is_err());
        // rasn's BER decoder has a nesting limit of its own; either layer
        // may refuse, neither may accept.
        if let Ok(decoded) = rasn::ber::decode::<WireFilter>(&ber(&w)) {
            assert!(from_wire(&decoded).is_err());
        }
    }

    fn to_wire_string(w: &WireFilter) -> String {
        from_wire(w).unwrap().to_string()
    }

    #[test]
    fn filter_wire_non_utf8_values() {
        let ours = Filter::Substrings {
            attr: "jpegPhoto".into(),
            initial: Some(vec![0xff, 0xd8]),
            any: vec![vec![0, 1, 2]],
            last: Some(vec![0xff, 0xd9]),
        };
        let back = from_wire(&unber(&ber(&to_wire(&ours)))).unwrap();
        assert_eq!(back, ours);
        assert_eq!(p(&back.to_string()), ours);
    }
}
