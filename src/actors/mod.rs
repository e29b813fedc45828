//! The supervision tree. `root` starts the outbox relay and the selected services; each service
//! supervisor owns one partition bridge per assigned Kafka partition (`bridge`), and the bridges
//! route records by key to per-entity actors such as the order saga (`order/saga.rs`).

pub mod batch;
pub mod bridge;
pub mod files;
pub mod hub;
pub mod inventory;
pub mod notifications;
pub mod order;
pub mod outbox;
pub mod payment;
pub mod root;
pub mod service;
pub mod supervision;
pub mod worker;

use std::fmt;
use std::str::FromStr;

/// A service a process can run (`orderflow serve --services …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// The HTTP API (order intake and reads).
    Api,
    /// The order service: outbox relay, partition bridges and order sagas.
    Order,
    /// The inventory service: catalogue, reservations, its relay and expiry sweeper.
    Inventory,
    /// The payment service: one payment per order through the payment provider.
    Payment,
    /// The file service: invoice PDFs in S3.
    File,
    /// The notification service: customer mails by SMTP.
    Notification,
}

impl Service {
    /// Every service this build implements, in start order.
    pub const ALL: &'static [Service] = &[
        Service::Order,
        Service::Inventory,
        Service::Payment,
        Service::File,
        Service::Notification,
        Service::Api,
    ];
    /// The roles an order needs to reach CONFIRMED: intake, saga, stock and payment (no
    /// documents, no mails). `orderflow load --services core` measures this path.
    pub const CORE: &'static [Service] = &[
        Service::Order,
        Service::Inventory,
        Service::Payment,
        Service::Api,
    ];
    /// Services of the design that later releases add; asking for them is a clear error.
    pub const PLANNED: &'static [&'static str] = &[];

    pub fn as_str(&self) -> &'static str {
        match self {
            Service::Api => "api",
            Service::Order => "order",
            Service::Inventory => "inventory",
            Service::Payment => "payment",
            Service::File => "file",
            Service::Notification => "notification",
        }
    }

    /// Parses `all`, `core` or a comma-separated list (which may mix them with names).
    pub fn parse_list(s: &str) -> Result<Vec<Service>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                out.extend_from_slice(Self::ALL);
            } else if part == "core" {
                out.extend_from_slice(Self::CORE);
            } else {
                out.push(part.parse()?);
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("no service selected".into());
        }
        Ok(out)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(Service::Api),
            "order" => Ok(Service::Order),
            "inventory" => Ok(Service::Inventory),
            "payment" => Ok(Service::Payment),
            "file" => Ok(Service::File),
            "notification" => Ok(Service::Notification),
            other if Self::PLANNED.contains(&other) => Err(format!(
                "service {other:?} is part of the design but not implemented in this release"
            )),
            other => Err(format!(
                "unknown service {other:?}; expected all, core or a list of: api, order, inventory, payment, file, notification"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_lists_parse() {
        assert_eq!(
            Service::parse_list("all"),
            Ok(vec![
                Service::Api,
                Service::Order,
                Service::Inventory,
                Service::Payment,
                Service::File,
                Service::Notification
            ])
        );
        assert_eq!(
            Service::parse_list("order, api,order"),
            Ok(vec![Service::Api, Service::Order])
        );
        assert_eq!(
            Service::parse_list("core"),
            Ok(vec![
                Service::Api,
                Service::Order,
                Service::Inventory,
                Service::Payment
            ])
        );
        assert_eq!(
            Service::parse_list("core,file"),
            Ok(vec![
                Service::Api,
                Service::Order,
                Service::Inventory,
                Service::Payment,
                Service::File
            ])
        );
        assert!(Service::parse_list("").is_err());
        assert!(Service::parse_list("bogus").is_err());
    }
}
