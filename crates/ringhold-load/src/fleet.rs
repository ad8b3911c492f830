//! `--part INDEX/COUNT`: one process's share of a load spread over many (a Kubernetes Indexed Job,
//! or machines you start by hand). Pure arithmetic: shares that add up to the total, and contiguous
//! blocks that tile it.

/// `--part INDEX/COUNT`: this process is part `index` (0-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: u32,
    pub count: u32,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Part {
    /// This part's share of `total`: `total / count`, one more for the first `total % count` parts.
    pub fn share(self, total: u64) -> u64 {
        let (n, k) = (u64::from(self.count), u64::from(self.index));
        total / n + u64::from(k < total % n)
    }

    /// Index of this part's first item when `total` items are split as by [`Part::share`].
    pub fn offset(self, total: u64) -> u64 {
        let (n, k) = (u64::from(self.count), u64::from(self.index));
        k * (total / n) + k.min(total % n)
    }
}

/// `3/10` (part 3 of 10, 0-based).
pub fn parse_part(s: &str) -> Result<Part, String> {
    let err = || format!("'{s}' is not INDEX/COUNT (0-based, e.g. 3/10)");
    let (i, n) = s.trim().split_once('/').ok_or_else(err)?;
    let index: u32 = i.trim().parse().map_err(|_| err())?;
    let count: u32 = n.trim().parse().map_err(|_| err())?;
    if count == 0 {
        return Err(format!("'{s}': COUNT must be at least 1"));
    }
    if index >= count {
        return Err(format!(
            "'{s}': INDEX counts from 0, so it must be below COUNT ({count})"
        ));
    }
    Ok(Part { index, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        assert_eq!(
            parse_part("3/10"),
            Ok(Part {
                index: 3,
                count: 10
            })
        );
        assert_eq!(parse_part(" 0 / 1 "), Ok(Part { index: 0, count: 1 }));
        for bad in ["10/10", "1/0", "3", "a/b", "-1/4", ""] {
            assert!(parse_part(bad).is_err(), "{bad}");
        }
        // Shares add up to the total and the blocks tile it, for totals below, at and above count.
        for total in [0u64, 3, 10, 301, 1_000_003] {
            for count in [1u32, 2, 3, 10] {
                let mut next = 0;
                for index in 0..count {
                    let p = Part { index, count };
                    assert_eq!(p.offset(total), next, "{total} {p}");
                    next += p.share(total);
                }
                assert_eq!(next, total);
            }
        }
    }
}
