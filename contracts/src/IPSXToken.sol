// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title IPSX utility token
/// @notice Fixed supply of 1,800,000,000 IPSX (18 decimals), minted once in the constructor to the
/// whitepaper's four allocations. There is no mint function. Transfers are locked until the sale
/// unlocks them at its finalization; while locked, only the sale and the two pools that pay people
/// during the funding period (early adopters / strategic partners, bounty campaign) may send tokens.
contract IPSXToken is ERC20 {
    uint256 public constant TOTAL_SUPPLY = 1_800_000_000 ether;
    /// @notice 50 %: funding participants, sold by the sale contract.
    uint256 public constant SALE_ALLOCATION = 900_000_000 ether;
    /// @notice 27.5 %: incentives for early adopters and strategic partners.
    uint256 public constant EARLY_ADOPTERS_ALLOCATION = 495_000_000 ether;
    /// @notice 2.5 %: bounty campaign.
    uint256 public constant BOUNTY_ALLOCATION = 45_000_000 ether;
    /// @notice 20 %: team and strategic partners.
    uint256 public constant TEAM_ALLOCATION = 360_000_000 ether;

    /// @notice The only address that can unlock transfers (the sale contract).
    address public immutable sale;
    address public immutable earlyAdopters;
    address public immutable bounty;
    address public immutable team;

    /// @notice False until the sale is finalized; then true forever.
    bool public transfersEnabled;

    event TransfersEnabled();

    error ZeroAddress();
    error TransfersLocked(address from);
    error OnlySale(address caller);
    error AlreadyEnabled();

    constructor(address sale_, address earlyAdopters_, address bounty_, address team_) ERC20("IPSX", "IPSX") {
        if (sale_ == address(0) || earlyAdopters_ == address(0) || bounty_ == address(0) || team_ == address(0)) {
            revert ZeroAddress();
        }
        sale = sale_;
        earlyAdopters = earlyAdopters_;
        bounty = bounty_;
        team = team_;
        _mint(sale_, SALE_ALLOCATION);
        _mint(earlyAdopters_, EARLY_ADOPTERS_ALLOCATION);
        _mint(bounty_, BOUNTY_ALLOCATION);
        _mint(team_, TEAM_ALLOCATION);
    }

    /// @notice Unlocks transfers for everyone; called once by the sale when it is finalized.
    function enableTransfers() external {
        if (msg.sender != sale) revert OnlySale(msg.sender);
        if (transfersEnabled) revert AlreadyEnabled();
        transfersEnabled = true;
        emit TransfersEnabled();
    }

    /// @notice Whether `from` may send tokens now.
    function canTransfer(address from) public view returns (bool) {
        return transfersEnabled || from == sale || from == earlyAdopters || from == bounty;
    }

    function _update(address from, address to, uint256 value) internal override {
        // from == 0 is the constructor's minting; the lock applies to every other sender.
        if (from != address(0) && !canTransfer(from)) revert TransfersLocked(from);
        super._update(from, to, value);
    }
}
