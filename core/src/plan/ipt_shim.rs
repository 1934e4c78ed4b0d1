//! TEMPORARY stand-in until net::iptables lands (lead's scaffolding; removed before commit).
use serde::Serialize;
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule(pub String);
impl Rule {
    pub fn parse(s: &str) -> Result<Rule, String> {
        Ok(Rule(s.to_string()))
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Table {
    Nat,
    Filter,
}
