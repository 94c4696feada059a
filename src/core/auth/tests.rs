use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn auth(public_read: bool) -> Auth {
    let mut cfg = AccessConfig::single_admin("secret");
    cfg.tokens.push(TokenEntry {
        name: "bob".into(),
        role: Role::Read,
        digest: token_digest("bobs-token"),
    });
    cfg.programs.insert(Role::Exec, vec!["ls".into()]);
    cfg.public_read = public_read;
    Auth::new(&cfg)
}

#[test]
fn tokens_map_to_their_principals() {
    let a = auth(false);
    assert_eq!(
        a.authenticate(PEER, Some("secret")).unwrap().role,
        Role::Admin
    );
    let bob = a.authenticate(PEER, Some("bobs-token")).unwrap();
    assert_eq!((&*bob.name, bob.role), ("bob", Role::Read));
    for bad in [
        None,
        Some(""),
        Some("secre"),
        Some("secret2"),
        Some("SECRET"),
    ] {
        let e = a.authenticate(PEER, bad).unwrap_err();
        assert_eq!(e.code, Code::Unauthorized, "{bad:?}");
    }
}

#[test]
fn anonymous_reader_only_when_public_read() {
    assert!(auth(false).anonymous().is_none());
    let a = auth(true);
    let anon = a.authenticate(PEER, None).unwrap();
    assert_eq!(anon.role, Role::Anonymous);
    assert!(anon.require(Action::Download).is_ok());
    assert_eq!(
        anon.require(Action::Browse).unwrap_err().code,
        Code::Unauthorized
    );
    // A wrong token is still wrong: it does not fall back to anonymous.
    assert!(a.authenticate(PEER, Some("nope")).is_err());
}

#[test]
fn roles_are_ordered() {
    let p = |role| Principal {
        name: "x".into(),
        role,
        programs: None,
    };
    assert!(p(Role::Read).require(Action::Browse).is_ok());
    assert_eq!(
        p(Role::Read).require(Action::Write).unwrap_err().code,
        Code::Forbidden
    );
    assert!(p(Role::Write).require(Action::Write).is_ok());
    assert!(p(Role::Write).require(Action::Exec).is_err());
    assert!(p(Role::Exec).require(Action::Exec).is_ok());
    assert!(p(Role::Exec).require(Action::Admin).is_err());
    assert!(p(Role::Admin).require(Action::Admin).is_ok());
}

#[test]
fn program_allowlists() {
    let allow = vec!["ls".to_string(), "/usr/bin/git".to_string()];
    assert!(program_allowed(&allow, "ls"));
    assert!(program_allowed(&allow, "/usr/bin/git"));
    // Only exact matches: a path ending in a listed name could be a file of the served root.
    for no in [
        "/bin/ls",
        "./ls",
        "git",
        "lsblk",
        "sh",
        "/bin/git",
        "",
        "/usr/bin/git2",
    ] {
        assert!(!program_allowed(&allow, no), "{no}");
    }
    assert!(!program_allowed(&[], "ls"));
    assert!(!program_allowed(&[String::new()], ""));
    let a = auth(false);
    let mut cfg = AccessConfig::single_admin("x");
    cfg.tokens[0].role = Role::Exec;
    cfg.programs.insert(Role::Exec, allow);
    let exec = Auth::new(&cfg).authenticate(PEER, Some("x")).unwrap();
    assert!(exec.require_program("ls", 0).is_ok());
    assert_eq!(
        exec.require_program("sh", 0).unwrap_err().code,
        Code::Forbidden
    );
    // Variables such as LD_PRELOAD would turn a listed program into any program.
    assert_eq!(
        exec.require_program("ls", 1).unwrap_err().code,
        Code::Forbidden
    );
    // Admin has no allowlist here.
    let admin = a.authenticate(PEER, Some("secret")).unwrap();
    assert!(admin.require_program("sh", 2).is_ok());
}

#[test]
fn failures_are_limited_per_address() {
    let a = auth(false);
    let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    for _ in 0..limit::BURST {
        assert_eq!(
            a.authenticate(PEER, Some("guess")).unwrap_err().code,
            Code::Unauthorized
        );
    }
    // Now even the right token is refused from that address, but not from another.
    assert_eq!(
        a.authenticate(PEER, Some("secret")).unwrap_err().code,
        Code::RateLimited
    );
    assert!(a.authenticate(other, Some("secret")).is_ok());
}

#[test]
fn buckets_refill_and_ipv6_counts_by_prefix() {
    let l = FailureLimiter::new(2, Duration::from_millis(50));
    let a: IpAddr = "2001:db8::1".parse().unwrap();
    let b: IpAddr = "2001:db8::2".parse().unwrap();
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
    l.failed(a);
    l.failed(b);
    let wait = l.peek(a).unwrap_err();
    assert!(wait <= Duration::from_millis(50));
    l.failed(mapped);
    assert!(l.peek(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))).is_ok());
    assert!(l.peek(IpAddr::V6(Ipv6Addr::LOCALHOST)).is_ok());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while l.peek(a).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the bucket never refilled"
        );
        std::thread::yield_now();
    }
}

#[test]
fn a_connection_recalls_its_token_but_the_limit_still_holds() {
    let a = auth(false);
    let proven = Proven::default();
    assert!(proven.recall("secret").is_none());
    let admin = a.authenticate_on(PEER, "secret", &proven).unwrap();
    assert!(Arc::ptr_eq(&proven.recall("secret").unwrap(), &admin));
    assert!(proven.recall("secreT").is_none());
    assert!(proven.recall("secret2").is_none());
    // Another token on the same connection is its own: bob's is checked and then recalled.
    let bob = a.authenticate_on(PEER, "bobs-token", &proven).unwrap();
    assert_eq!(bob.role, Role::Read);
    assert!(proven.recall("secret").is_none());
    // Wrong tokens are still wrong on a connection that proved one, and count.
    for _ in 0..limit::BURST {
        assert_eq!(
            a.authenticate_on(PEER, "guess", &proven).unwrap_err().code,
            Code::Unauthorized
        );
    }
    // The recalled token is refused while the address is limited, as on a new connection.
    assert_eq!(
        a.authenticate_on(PEER, "bobs-token", &proven)
            .unwrap_err()
            .code,
        Code::RateLimited
    );
}

#[test]
fn an_address_that_only_succeeds_leaves_no_bucket() {
    let l = FailureLimiter::new(3, REFILL);
    l.take(PEER).unwrap();
    l.refund(PEER);
    assert_eq!(l.tracked(), 0);
    // A failure leaves one, which a success does not clear until it has refilled.
    l.failed(PEER);
    l.take(PEER).unwrap();
    l.refund(PEER);
    assert_eq!(l.tracked(), 1);
}
