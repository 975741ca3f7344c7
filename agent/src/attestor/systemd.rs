//! The systemd attestor: `systemd:unit:<name>` and `systemd:slice:<name>`
//! from the caller's path in systemd's cgroup hierarchy.
//!
//! The unit is the first component that is not a slice, as systemd itself
//! reads it (`cg_path_get_unit`): everything below a unit's cgroup is the
//! unit's own (a service with `Delegate=yes`, a user's `user@1000.service`
//! manager) and may be named anything by whoever runs it, so a name found
//! there says nothing. Only root can make cgroups in the slice tree above.
//! The slice is the innermost one around the unit (systemd's slice names
//! already spell out their parents: `user-1000.slice` is in `user.slice`);
//! a unit at the root is in `-.slice`.

use lanyard_proto::Selector;
use lanyard_proto::selector::{SYSTEMD_SELECTOR_TYPE, SYSTEMD_UNIT_SUFFIXES, is_unit_name};

use super::cgroup::{Membership, components};

/// The unit and slice of a process whose systemd cgroup path is `path`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SystemdPlacement {
    pub unit: Option<String>,
    pub slice: Option<String>,
}

impl SystemdPlacement {
    pub(crate) fn of_path(path: &str) -> Self {
        let Some(components) = components(path) else {
            return Self::default();
        };
        let mut slice = None;
        for component in components {
            if component.ends_with(".slice") && is_unit_name(component) {
                slice = Some(component);
                continue;
            }
            let unit = (is_unit_name(component)
                && SYSTEMD_UNIT_SUFFIXES.iter().any(|s| component.ends_with(s)))
            .then(|| component.to_owned());
            return Self {
                slice: match (&unit, slice) {
                    (Some(_), None) => Some("-.slice".to_owned()),
                    (_, slice) => slice.map(str::to_owned),
                },
                unit,
            };
        }
        Self {
            unit: None,
            slice: slice.map(str::to_owned),
        }
    }

    pub(crate) fn of(membership: &Membership) -> Self {
        membership
            .systemd_path()
            .map(Self::of_path)
            .unwrap_or_default()
    }

    pub(crate) fn selectors(&self) -> Vec<Selector> {
        [("unit", &self.unit), ("slice", &self.slice)]
            .into_iter()
            .filter_map(|(key, value)| {
                let value = value.as_ref()?;
                Selector::new(SYSTEMD_SELECTOR_TYPE, format!("{key}:{value}")).ok()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn assert_placed(path: &str, unit: Option<&str>, slice: Option<&str>) {
        let got = SystemdPlacement::of_path(path);
        assert_eq!(
            (got.unit.as_deref(), got.slice.as_deref()),
            (unit, slice),
            "{path}"
        );
    }

    #[test]
    fn units_and_slices_as_systemd_reads_them() {
        assert_placed(
            "/system.slice/billing.service",
            Some("billing.service"),
            Some("system.slice"),
        );
        assert_placed(
            "/user.slice/user-1000.slice/session-3.scope",
            Some("session-3.scope"),
            Some("user-1000.slice"),
        );
        // Below a unit is the unit's own: a user manager's units are its.
        assert_placed(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/web.service",
            Some("user@1000.service"),
            Some("user-1000.slice"),
        );
        // A delegated service's sub-cgroups.
        assert_placed(
            "/system.slice/runner.service/payload/billing.service",
            Some("runner.service"),
            Some("system.slice"),
        );
        assert_placed("/init.scope", Some("init.scope"), Some("-.slice"));
        assert_placed("/system.slice", None, Some("system.slice"));
        assert_placed("/", None, None);
        // Not systemd's: cgroupfs-driven engines, a namespace's outside.
        assert_placed("/docker/0123", None, None);
        assert_placed(
            "/lanyard-test.slice/odd name.service",
            None,
            Some("lanyard-test.slice"),
        );
        assert_placed("/../system.slice/billing.service", None, None);
    }

    #[test]
    fn selectors_name_unit_and_slice() {
        let got: Vec<String> = SystemdPlacement::of_path("/system.slice/billing.service")
            .selectors()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            ["systemd:unit:billing.service", "systemd:slice:system.slice"]
        );
        for selector in &got {
            assert!(Selector::parse_known(selector).is_ok(), "{selector}");
        }
    }
}
