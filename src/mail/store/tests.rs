use super::*;

fn store() -> (tempfile::TempDir, MailStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path())
        .unwrap()
        .with_host_name("test-node");
    (dir, store)
}

fn key(token: &str, maybe_stored: bool) -> DeliveryKey<'_> {
    DeliveryKey {
        token,
        at_micros: 1_700_000_000_123_456,
        maybe_stored,
    }
}

#[test]
fn a_delivery_lands_in_new_and_is_counted() {
    let (_dir, store) = store();
    let mbox = store.mailbox("example.org", "alice").unwrap();
    let done = mbox
        .deliver(
            &FolderName::inbox(),
            b"Subject: a\r\n\r\nbody\r\n",
            &Quota::UNLIMITED,
        )
        .unwrap();
    let path = mbox.path().join("new").join(&done.file_name);
    assert_eq!(fs::read(path).unwrap(), b"Subject: a\r\n\r\nbody\r\n");
    assert!(done.file_name.ends_with(",S=20"), "{}", done.file_name);
    assert_eq!(
        mbox.usage().unwrap(),
        Usage {
            bytes: 20,
            count: 1
        }
    );
    let tmp: Vec<_> = fs::read_dir(mbox.path().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "tmp/ keeps nothing after a delivery");
}

#[test]
fn a_repeated_keyed_delivery_stores_one_copy_even_after_it_was_read() {
    let (_dir, store) = store();
    let mbox = store.mailbox("example.org", "alice").unwrap();
    let inbox = FolderName::inbox();
    let first = mbox
        .deliver_once(&inbox, b"m", &Quota::UNLIMITED, &key("q1", false))
        .unwrap();
    assert!(!first.again);
    let again = mbox
        .deliver_once(&inbox, b"m", &Quota::UNLIMITED, &key("q1", false))
        .unwrap();
    assert!(again.again, "new/ already holds the copy");
    // A client moved it to cur/ and flagged it; a retry must still find it.
    let folder = mbox.open_folder(&inbox).unwrap();
    folder.take_new().unwrap();
    folder.set_flags(&first.file_name, Flags::SEEN).unwrap();
    let retry = mbox
        .deliver_once(&inbox, b"m", &Quota::UNLIMITED, &key("q1", true))
        .unwrap();
    assert!(retry.again);
    assert_eq!(folder.scan().unwrap().len(), 1);
    assert_eq!(mbox.usage().unwrap().count, 1);
    // Another queue id is another message.
    mbox.deliver_once(&inbox, b"m", &Quota::UNLIMITED, &key("q2", false))
        .unwrap();
    assert_eq!(folder.scan().unwrap().len(), 2);
    assert!(matches!(
        mbox.deliver_once(&inbox, b"m", &Quota::UNLIMITED, &key("../x", false)),
        Err(StoreError::InvalidName(_))
    ));
}

#[test]
fn quota_refuses_what_would_not_fit_and_leaves_nothing() {
    let (_dir, store) = store();
    let mbox = store.mailbox("example.org", "bob").unwrap();
    let quota = Quota {
        max_bytes: Some(10),
        max_count: Some(5),
    };
    mbox.deliver(&FolderName::inbox(), b"123456", &quota)
        .unwrap();
    assert!(matches!(
        mbox.deliver(&FolderName::inbox(), b"123456", &quota),
        Err(StoreError::OverQuota)
    ));
    assert!(mbox.quota_check(4, &quota).is_ok());
    assert_eq!(
        mbox.open_folder(&FolderName::inbox())
            .unwrap()
            .scan()
            .unwrap()
            .len(),
        1
    );
    let text = fs::read_to_string(mbox.path().join("maildirsize")).unwrap();
    assert!(text.starts_with("10S,5C\n"), "{text}");
}

#[test]
fn maildirsize_is_rebuilt_when_damaged() {
    let (_dir, store) = store();
    let mbox = store.mailbox("example.org", "bob").unwrap();
    for _ in 0..3 {
        mbox.deliver(&FolderName::inbox(), b"1234", &Quota::UNLIMITED)
            .unwrap();
    }
    fs::write(mbox.path().join("maildirsize"), "garbage").unwrap();
    assert_eq!(
        mbox.usage().unwrap(),
        Usage {
            bytes: 12,
            count: 3
        }
    );
}

#[test]
fn folders_are_created_listed_renamed_and_deleted() {
    let (_dir, store) = store();
    let mbox = store.mailbox("example.org", "carol").unwrap();
    let archive = FolderName::new("Archive").unwrap();
    let year = FolderName::new("Archive.2024").unwrap();
    mbox.create_folder(&archive).unwrap();
    mbox.create_folder(&year).unwrap();
    assert!(matches!(
        mbox.create_folder(&archive),
        Err(StoreError::FolderExists)
    ));
    assert!(mbox.path().join(".Archive/maildirfolder").exists());
    mbox.deliver(&year, b"old mail", &Quota::UNLIMITED).unwrap();
    let names: Vec<String> = mbox
        .folders()
        .unwrap()
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(names, ["INBOX", "Archive", "Archive.2024"]);
    let old = FolderName::new("Old").unwrap();
    mbox.rename_folder(&archive, &old).unwrap();
    let names: Vec<String> = mbox
        .folders()
        .unwrap()
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(names, ["INBOX", "Old", "Old.2024"]);
    assert_eq!(mbox.usage().unwrap().count, 1);
    mbox.delete_folder(&FolderName::new("Old.2024").unwrap())
        .unwrap();
    assert_eq!(mbox.usage().unwrap().count, 0);
    for bad in ["", "a/b", "..", ".x", "a..b", "x\u{0}"] {
        assert!(FolderName::new(bad).is_err(), "{bad:?}");
    }
    assert!(store.mailbox("example.org", "../etc").is_err());
    assert!(store.mailbox("..", "x").is_err());
}

#[test]
fn flags_live_in_the_name_and_survive_a_copy_and_expunge_counts() {
    let (_dir, store) = store();
    let mbox = store.mailbox("example.org", "dave").unwrap();
    let inbox = mbox.open_folder(&FolderName::inbox()).unwrap();
    let done = mbox
        .deliver(&FolderName::inbox(), b"flag me", &Quota::UNLIMITED)
        .unwrap();
    let entry = inbox
        .set_flags(&done.file_name, Flags::SEEN | Flags::FLAGGED)
        .unwrap();
    assert!(entry.path.to_string_lossy().ends_with(":2,FS"));
    assert_eq!(
        inbox.entry(&done.file_name).unwrap().flags,
        Flags::SEEN | Flags::FLAGGED
    );
    let trash = FolderName::new("Trash").unwrap();
    mbox.create_folder(&trash).unwrap();
    let trash = mbox.open_folder(&trash).unwrap();
    let copy = inbox
        .copy_to(&done.file_name, &trash, &Quota::UNLIMITED)
        .unwrap();
    assert_eq!(trash.read(&copy.id).unwrap(), b"flag me");
    assert_eq!(copy.flags, Flags::SEEN | Flags::FLAGGED);
    assert_eq!(mbox.usage().unwrap().count, 2);
    inbox.expunge(&done.file_name).unwrap();
    assert!(matches!(
        inbox.read(&done.file_name),
        Err(StoreError::NoSuchMessage)
    ));
    assert_eq!(mbox.usage().unwrap(), Usage { bytes: 7, count: 1 });
}

#[test]
fn concurrent_deliveries_get_distinct_names_and_exact_usage() {
    let (_dir, store) = store();
    let mbox = store.mailbox("example.org", "erin").unwrap();
    mbox.deliver(&FolderName::inbox(), b"x", &Quota::UNLIMITED)
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mbox = mbox.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    mbox.deliver(&FolderName::inbox(), b"12345", &Quota::UNLIMITED)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = mbox
        .open_folder(&FolderName::inbox())
        .unwrap()
        .scan()
        .unwrap();
    assert_eq!(all.len(), 101);
    assert_eq!(
        mbox.usage().unwrap(),
        Usage {
            bytes: 501,
            count: 101
        }
    );
}

#[test]
fn nodes_sharing_one_root_deliver_at_once_without_losing_or_miscounting() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<MailStore> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| MailStore::open(dir.path()).unwrap().with_host_name(n))
        .collect();
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let mbox = store.mailbox("example.org", "shared").unwrap();
            std::thread::spawn(move || {
                for n in 0..30 {
                    let token = format!("q{i}x{n}");
                    let key = DeliveryKey {
                        token: &token,
                        at_micros: 1,
                        maybe_stored: false,
                    };
                    mbox.deliver_once(&FolderName::inbox(), b"0123456789", &Quota::UNLIMITED, &key)
                        .unwrap();
                    mbox.deliver(&FolderName::inbox(), b"abc", &Quota::UNLIMITED)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mbox = nodes[0].mailbox("example.org", "shared").unwrap();
    let all = mbox
        .open_folder(&FolderName::inbox())
        .unwrap()
        .scan()
        .unwrap();
    assert_eq!(all.len(), 180);
    for host in ["n1", "n2", "n3"] {
        assert_eq!(
            all.iter()
                .filter(|m| m.id.contains(&format!(".{host},")))
                .count(),
            60
        );
    }
    assert_eq!(
        mbox.usage().unwrap(),
        Usage {
            bytes: 90 * 10 + 90 * 3,
            count: 180
        }
    );
}

#[test]
fn uids_are_assigned_in_delivery_order_and_survive_flags_reopening_and_renames() {
    let (_dir, store) = store();
    let mbox = store.mailbox("example.org", "uids").unwrap();
    let inbox = FolderName::inbox();
    let names: Vec<String> = (0..3)
        .map(|i| {
            mbox.deliver(&inbox, format!("m{i}").as_bytes(), &Quota::UNLIMITED)
                .unwrap()
                .file_name
        })
        .collect();
    let folder = mbox.open_folder(&inbox).unwrap();
    let first = folder.uids().unwrap();
    let uids: Vec<u32> = first.messages.iter().map(|(u, _)| *u).collect();
    assert_eq!(uids, [1, 2, 3]);
    assert_eq!(first.next, 4);
    let ids: Vec<&str> = first.messages.iter().map(|(_, m)| m.id.as_str()).collect();
    assert_eq!(ids, names.iter().map(String::as_str).collect::<Vec<_>>());

    // Seen and flagged, moved to cur/, read through a new handle: the same UIDs.
    folder.take_new().unwrap();
    folder.set_flags(&names[1], Flags::SEEN).unwrap();
    let again = mbox.open_folder(&inbox).unwrap().uids().unwrap();
    assert_eq!(again.validity, first.validity);
    assert_eq!(
        again.messages.iter().map(|(u, _)| *u).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // An expunged UID is not reused; a new message gets the next one.
    folder.expunge(&names[0]).unwrap();
    let fourth = mbox
        .deliver(&inbox, b"m3", &Quota::UNLIMITED)
        .unwrap()
        .file_name;
    let now = folder.uids().unwrap();
    let pairs: Vec<(u32, &str)> = now
        .messages
        .iter()
        .map(|(u, m)| (*u, m.id.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            (2, names[1].as_str()),
            (3, names[2].as_str()),
            (4, fourth.as_str())
        ]
    );
    assert_eq!(now.next, 5);

    // A renamed folder keeps its index.
    let old = FolderName::new("Old").unwrap();
    mbox.create_folder(&old).unwrap();
    let kept = mbox
        .deliver(&old, b"kept", &Quota::UNLIMITED)
        .unwrap()
        .file_name;
    let before = mbox.open_folder(&old).unwrap().uids().unwrap();
    let renamed = FolderName::new("Renamed").unwrap();
    mbox.rename_folder(&old, &renamed).unwrap();
    let after = mbox.open_folder(&renamed).unwrap().uids().unwrap();
    assert_eq!(
        after,
        UidMap {
            messages: after.messages.clone(),
            ..before.clone()
        }
    );
    assert_eq!(after.messages[0].1.id, kept);

    // A damaged index starts again under a larger UIDVALIDITY.
    fs::write(mbox.path().join("pigeonair-uidlist"), "garbage").unwrap();
    let fresh = folder.uids().unwrap();
    assert!(
        fresh.validity > now.validity,
        "{} vs {}",
        fresh.validity,
        now.validity
    );
    assert_eq!(
        fresh.messages.iter().map(|(u, _)| *u).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}
