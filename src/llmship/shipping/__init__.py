"""The shipping plane's parts between the sinks and delivery (see DESIGN.md): the packer."""
