//! `nimbus users create|list|show|disable|enable|set-roles|delete`: the identity provider's users,
//! in the app's store directly (running nodes read users from the store on every sign-in).

use std::io::BufRead as _;

use anyhow::Context;
use nimbus_identity::{User, UserError, Users};

use crate::Failure;
use crate::cli::{UsersArgs, UsersCommand};
use crate::keys::{time, with_store};

pub fn run(args: UsersArgs) -> Result<(), Failure> {
    with_store(&args.store, true, async |store, _| {
        let users = Users::new(store);
        let json = args.store.json;
        let user = match args.command {
            UsersCommand::Create { email, name, roles, password_stdin } => {
                nimbus_identity::check_names("role", &roles).map_err(explain)?;
                let password = match password_stdin {
                    true => Some(
                        std::io::stdin().lock().lines().next().transpose()?.context("no password on standard input")?,
                    ),
                    false => None,
                };
                let user = users.create(&email, password.as_deref(), name.as_deref()).await.map_err(explain)?;
                users.update(&user.id, |u| set(&mut u.roles, &roles)).await.map_err(explain)?
            }
            UsersCommand::List => {
                let list = users.list().await.map_err(explain)?;
                if json {
                    let list: Vec<_> = list.iter().map(User::public).collect();
                    println!("{}", serde_json::to_string(&list)?);
                } else if list.is_empty() {
                    println!("no users");
                } else {
                    println!("{:<24}  {:<8}  {:<20}  {:<20}  EMAIL", "ID", "STATUS", "CREATED", "ROLES");
                    for u in &list {
                        let status = if u.disabled { "disabled" } else { "active" };
                        println!(
                            "{:<24}  {status:<8}  {:<20}  {:<20}  {}",
                            u.id,
                            time(Some(u.created)),
                            u.roles.join(","),
                            u.email
                        );
                    }
                }
                return Ok(());
            }
            UsersCommand::Show { user } => find(&users, &user).await?,
            UsersCommand::Disable { user } => {
                let id = find(&users, &user).await?.id;
                users.update(&id, |u| flag(&mut u.disabled, true)).await.map_err(explain)?
            }
            UsersCommand::Enable { user } => {
                let id = find(&users, &user).await?.id;
                users.update(&id, |u| flag(&mut u.disabled, false)).await.map_err(explain)?
            }
            UsersCommand::SetRoles { user, roles } => {
                nimbus_identity::check_names("role", &roles).map_err(explain)?;
                let id = find(&users, &user).await?.id;
                users.update(&id, |u| set(&mut u.roles, &roles)).await.map_err(explain)?
            }
            UsersCommand::Delete { user } => {
                let found = find(&users, &user).await?;
                users.delete(&found.id).await.map_err(explain)?;
                println!("Deleted user {} ({}).", found.id, found.email);
                return Ok(());
            }
        };
        print(&user, json)
    })
}

fn set(target: &mut Vec<String>, value: &[String]) -> Result<(), UserError> {
    *target = value.to_vec();
    Ok(())
}

fn flag(target: &mut bool, value: bool) -> Result<(), UserError> {
    *target = value;
    Ok(())
}

/// A user by id, or by e-mail address when the argument has an `@`.
async fn find(users: &Users, key: &str) -> anyhow::Result<User> {
    let found = match key.contains('@') {
        true => users.by_email(key).await.map_err(explain)?,
        false => match users.get(key).await {
            Ok(u) => Some(u),
            Err(UserError::NotFound) => None,
            Err(e) => return Err(explain(e)),
        },
    };
    found.ok_or_else(|| anyhow::anyhow!("no user \"{key}\""))
}

fn explain(e: UserError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn print(user: &User, json: bool) -> Result<(), Failure> {
    if json {
        println!("{}", user.public());
    } else {
        println!("id        {}", user.id);
        println!("email     {}{}", user.email, if user.email_verified { " (verified)" } else { "" });
        println!("name      {}", user.name.as_deref().unwrap_or("-"));
        println!("status    {}", if user.disabled { "disabled" } else { "active" });
        println!("roles     {}", if user.roles.is_empty() { "-".to_owned() } else { user.roles.join(", ") });
        println!("created   {}", time(Some(user.created)));
        println!("password  {}", if user.password.is_some() { "set" } else { "not set" });
    }
    Ok(())
}
