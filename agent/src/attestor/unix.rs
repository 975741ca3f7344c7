//! The unix attestor: selectors from the caller's kernel credentials.

use lanyard_proto::Selector;
use lanyard_proto::selector::UNIX_SELECTOR_TYPE;
use nix::unistd::{Gid, Group, Uid, User};

/// What `SO_PEERCRED` told us about the process on the other end of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// The caller's unix selectors: `uid`, `gid`, and `user`/`group` where the
/// ids have names.
pub fn selectors(peer: &PeerCredentials) -> Vec<Selector> {
    let mut facts = vec![("uid", peer.uid.to_string()), ("gid", peer.gid.to_string())];
    if let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) {
        facts.push(("user", user.name));
    }
    if let Ok(Some(group)) = Group::from_gid(Gid::from_raw(peer.gid)) {
        facts.push(("group", group.name));
    }
    facts
        .into_iter()
        .filter_map(|(key, value)| Selector::new(UNIX_SELECTOR_TYPE, format!("{key}:{value}")).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_uid_gid_and_names() {
        let got: Vec<String> = selectors(&PeerCredentials {
            uid: 0,
            gid: 0,
            pid: None,
        })
        .iter()
        .map(ToString::to_string)
        .collect();
        assert!(got.contains(&"unix:uid:0".to_owned()));
        assert!(got.contains(&"unix:gid:0".to_owned()));
        assert!(got.contains(&"unix:user:root".to_owned()));
    }
}
