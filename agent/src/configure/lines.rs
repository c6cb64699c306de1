//! Line-based edits of sysctl files (`key = value`) and limits.conf
//! (`domain type item value`). Only the lines of the key being changed are
//! touched; comments, blank lines, unknown lines and the spacing of every
//! other line stay byte for byte. A line whose value already is the wanted
//! one is left as it is, so applying a request twice changes nothing.

use super::request::Operation;
use log::warn;

/// Splits text into lines without their `\n`, and whether the text ended
/// with one.
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n')
        .map(|l| l.strip_suffix('\n').unwrap_or(l))
        .collect()
}

fn join(lines: &[String], extra: Option<String>) -> String {
    let mut out = String::new();
    for l in lines.iter().chain(extra.as_ref()) {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Key characters a sysctl name may hold (`net.ipv4.conf.eth0/1.rp_filter`
/// has `/` in an interface name; `*` is sysctl.d's glob).
pub fn check_sysctl_key(key: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-/*:@+".contains(c);
    if key.is_empty() || key.starts_with(['.', '/']) || !key.chars().all(ok) {
        return Err("is not a sysctl name (letters, digits and . _ - / * : @ +)".into());
    }
    Ok(())
}

/// A value that fits on one line of a config file as printable text: no
/// control character but tab (an escape sequence in `sysctl.conf` reaches
/// whoever reads the file on a terminal; CR, LF, NUL would split the line).
pub fn check_line_value(value: &str) -> Result<(), String> {
    match value.chars().find(|&c| c.is_control() && c != '\t') {
        Some('\n' | '\r' | '\0') => Err("the value spans lines".into()),
        Some(c) => Err(format!("the value holds a control character ({c:?})")),
        None => Ok(()),
    }
}

/// `(key as sysctl reads it, byte offset of the value, value)` of a
/// `key = value` line; `None` for comments, blanks and lines without `=`.
fn sysctl_line(line: &str) -> Option<(String, usize, &str)> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with(['#', ';']) {
        return None;
    }
    let eq = line.find('=')?;
    let key = line[..eq].trim().trim_start_matches('-').replace('/', ".");
    let after = &line[eq + 1..];
    let start = eq + 1 + (after.len() - after.trim_start().len());
    Some((key, start, line[start..].trim_end()))
}

fn same_words(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

/// Sets or deletes `key` in a sysctl file. Set rewrites the value of every
/// line holding the key (sysctl takes the last), or appends `key=value`.
/// Delete removes the key's lines, only those with `value` when one is given
/// (KubeOS: a delete naming another value than the file's is skipped).
pub fn edit_sysctl(text: &str, key: &str, op: Operation, value: &str) -> String {
    let want = key.replace('/', ".");
    let mut found = false;
    let mut out = vec![];
    for line in lines(text) {
        let Some((k, start, v)) = sysctl_line(line).filter(|(k, _, _)| *k == want) else {
            out.push(line.to_owned());
            continue;
        };
        found = true;
        match op {
            Operation::Set if same_words(v, value) => out.push(line.to_owned()),
            Operation::Set => out.push(format!("{}{value}", &line[..start])),
            Operation::Delete if value.is_empty() || same_words(v, value) => {}
            Operation::Delete => {
                warn!("sysctl {k}: not deleted, it holds {v:?} and the request names {value:?}");
                out.push(line.to_owned());
            }
        }
    }
    let extra = (op == Operation::Set && !found).then(|| format!("{key}={value}"));
    join(&out, extra)
}

/// One limits.conf limit as a request names it; `_` fields match any line
/// (type, item) or keep the line's value (value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub domain: String,
    pub kind: String,
    pub item: String,
    pub value: String,
}

const ANY: &str = "_";

impl Limit {
    /// From KubeOS's shape, key `domain` and value `type.item.value`, or this
    /// agent's, key `domain type item` and value `value`. A delete may leave
    /// the value out (`type.item`, or an empty value).
    pub fn parse(key: &str, value: &str, op: Operation) -> Result<Limit, String> {
        let words: Vec<&str> = key.split_whitespace().collect();
        let (domain, kind, item, value) = match words.as_slice() {
            [domain] => {
                let parts: Vec<&str> = value.trim().split('.').collect();
                match (parts.as_slice(), op) {
                    ([t, i, v], _) => (*domain, *t, *i, *v),
                    ([t, i], Operation::Delete) => (*domain, *t, *i, ANY),
                    _ => {
                        return Err(format!(
                            "value {value:?} is not TYPE.ITEM.VALUE (e.g. soft.nofile.65536)"
                        ))
                    }
                }
            }
            [domain, t, i] => {
                let v = value.trim();
                let v = if v.is_empty() && op == Operation::Delete {
                    ANY
                } else {
                    v
                };
                (*domain, *t, *i, v)
            }
            _ => return Err("is not DOMAIN or DOMAIN TYPE ITEM".into()),
        };
        let limit = Limit {
            domain: domain.into(),
            kind: kind.into(),
            item: item.into(),
            value: value.into(),
        };
        limit.check()?;
        Ok(limit)
    }

    fn check(&self) -> Result<(), String> {
        let field_ok =
            |f: &str| !f.is_empty() && !f.contains(|c: char| c.is_whitespace() || c == '#');
        if !field_ok(&self.domain) || self.domain == ANY {
            return Err(format!("domain {:?} is not valid", self.domain));
        }
        if !["soft", "hard", "-", ANY].contains(&self.kind.as_str()) {
            return Err(format!("type {:?} is not soft, hard or -", self.kind));
        }
        if !field_ok(&self.item) || !field_ok(&self.value) {
            return Err(format!(
                "item {:?} or value {:?} is empty or has blanks",
                self.item, self.value
            ));
        }
        Ok(())
    }

    fn matches(&self, fields: &[&str]) -> bool {
        let field = |want: &str, have: &str| want == ANY || want == have;
        fields[0] == self.domain && field(&self.kind, fields[1]) && field(&self.item, fields[2])
    }
}

/// The four fields of a limit line (before any `#` comment) and the byte
/// range of its value.
fn limit_line(line: &str) -> Option<([&str; 4], std::ops::Range<usize>)> {
    let content = &line[..line.find('#').unwrap_or(line.len())];
    let words: Vec<&str> = content.split_whitespace().collect();
    let [d, t, i, v] = words.as_slice() else {
        return None;
    };
    let start = v.as_ptr() as usize - line.as_ptr() as usize;
    Some(([d, t, i, v], start..start + v.len()))
}

/// Sets or deletes one limit in limits.conf. A line is the same limit when
/// domain, type and item agree (KubeOS matched the domain only, which
/// rewrote `* hard nofile` when `* soft nofile` was meant).
pub fn edit_limits(text: &str, limit: &Limit, op: Operation) -> Result<String, String> {
    let mut found = false;
    let mut out = vec![];
    for line in lines(text) {
        let Some((fields, range)) = limit_line(line).filter(|(f, _)| limit.matches(f)) else {
            out.push(line.to_owned());
            continue;
        };
        found = true;
        let same = limit.value == ANY || limit.value == fields[3];
        match op {
            Operation::Set if same => out.push(line.to_owned()),
            Operation::Set => out.push(format!(
                "{}{}{}",
                &line[..range.start],
                limit.value,
                &line[range.end..]
            )),
            Operation::Delete if same => {}
            Operation::Delete => {
                warn!(
                    "limit {line:?}: not deleted, the request names value {:?}",
                    limit.value
                );
                out.push(line.to_owned());
            }
        }
    }
    let mut extra = None;
    if op == Operation::Set && !found {
        if [&limit.kind, &limit.item, &limit.value].contains(&&ANY.to_owned()) {
            return Err(format!(
                "no line for {} {} {} to update, and `_` cannot be added",
                limit.domain, limit.kind, limit.item
            ));
        }
        extra = Some(format!(
            "{} {} {} {}",
            limit.domain, limit.kind, limit.item, limit.value
        ));
    }
    Ok(join(&out, extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::{Delete, Set};

    const SYSCTL: &str = "# kernel tuning\n\nvm.swappiness = 60\n; old style\nnet/ipv4/ip_forward=0\n-kernel.pid_max = 4096\nbogus line\n";

    #[test]
    fn sysctl_update_keeps_spacing_and_other_lines() {
        let out = edit_sysctl(SYSCTL, "vm.swappiness", Set, "10");
        assert_eq!(
            out,
            SYSCTL.replace("vm.swappiness = 60", "vm.swappiness = 10")
        );
        let out = edit_sysctl(SYSCTL, "net.ipv4.ip_forward", Set, "1");
        assert!(out.contains("\nnet/ipv4/ip_forward=1\n"), "{out}");
        assert_eq!(edit_sysctl(SYSCTL, "kernel.pid_max", Set, "4096"), SYSCTL);
    }

    #[test]
    fn sysctl_add_delete_and_idempotence() {
        let added = edit_sysctl("a = 1", "b.c", Set, "2 3");
        assert_eq!(added, "a = 1\nb.c=2 3\n");
        assert_eq!(edit_sysctl(&added, "b.c", Set, "2  3"), added);
        assert_eq!(edit_sysctl(&added, "b.c", Delete, ""), "a = 1\n");
        assert_eq!(edit_sysctl(&added, "b.c", Delete, "9"), added);
        assert_eq!(edit_sysctl(&added, "b.c", Delete, "2 3"), "a = 1\n");
        assert_eq!(edit_sysctl("a = 1\n", "zz", Delete, ""), "a = 1\n");
        assert_eq!(edit_sysctl("", "k", Set, "v"), "k=v\n");
    }

    #[test]
    fn sysctl_keys() {
        assert!(check_sysctl_key("net.ipv4.conf.eth0/1.rp_filter").is_ok());
        assert!(check_sysctl_key("").is_err());
        assert!(check_sysctl_key("a b").is_err());
        assert!(check_sysctl_key("a=b").is_err());
        assert!(check_sysctl_key("../x").is_err());
        assert!(check_line_value("1\n2").is_err());
        // Escape sequences and the other C0/C1 controls (a review found them
        // written to sysctl.conf as they came); a tab between words is text.
        for bad in ["10\u{1b}[2J", "1\u{0b}", "1\u{7f}", "1\u{85}"] {
            assert!(
                check_line_value(bad).unwrap_err().contains("control"),
                "{bad:?}"
            );
        }
        assert!(check_line_value("4096\t87380\t6291456").is_ok());
    }

    const LIMITS: &str = "# /etc/security/limits.conf\n*    soft  nofile  1024  # default\n*    hard  nofile  4096\n@dev -     nproc   100\n";

    fn limit(key: &str, value: &str, op: Operation) -> Limit {
        Limit::parse(key, value, op).unwrap()
    }

    #[test]
    fn limits_update_the_matching_line_only() {
        let l = limit("*", "hard.nofile.8192", Set);
        let out = edit_limits(LIMITS, &l, Set).unwrap();
        assert_eq!(
            out,
            LIMITS.replace("hard  nofile  4096", "hard  nofile  8192")
        );
        let l = limit("* soft nofile", "2048", Set);
        let out = edit_limits(LIMITS, &l, Set).unwrap();
        assert!(
            out.contains("*    soft  nofile  2048  # default\n"),
            "{out}"
        );
        assert_eq!(edit_limits(&out, &l, Set).unwrap(), out);
        let keep = limit("@dev", "_._.200", Set);
        assert!(edit_limits(LIMITS, &keep, Set)
            .unwrap()
            .contains("@dev -     nproc   200\n"));
    }

    #[test]
    fn limits_add_and_delete() {
        let l = limit("root", "soft.core.0", Set);
        let out = edit_limits(LIMITS, &l, Set).unwrap();
        assert_eq!(out, format!("{LIMITS}root soft core 0\n"));
        assert_eq!(edit_limits(&out, &l, Set).unwrap(), out);
        let del = limit("root", "soft.core", Delete);
        assert_eq!(edit_limits(&out, &del, Delete).unwrap(), LIMITS);
        let wrong = limit("*", "hard.nofile.1", Delete);
        assert_eq!(edit_limits(LIMITS, &wrong, Delete).unwrap(), LIMITS);
        let missing = limit("nobody", "_.core.1", Set);
        assert!(edit_limits(LIMITS, &missing, Set).is_err());
    }

    #[test]
    fn limit_shapes() {
        assert!(Limit::parse("*", "1.2", Set).is_err());
        assert!(Limit::parse("*", "medium.nofile.1", Set).is_err());
        assert!(Limit::parse("a b", "1", Set).is_err());
        assert!(Limit::parse("", "soft.nofile.1", Set).is_err());
        assert!(Limit::parse("* soft nofile", "", Set).is_err());
        assert_eq!(limit("* soft nofile", "", Delete).value, "_");
    }
}
